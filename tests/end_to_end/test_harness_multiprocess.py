"""lm-evaluation-harness on two real processes on 127.0.0.1 (jax.distributed + gloo, two CPU devices each): the
model is one sharded computation across them, the first process alone prints and writes lm-eval's results, and
those are exactly what one process on as many devices reports."""

import glob
import json
import os
import subprocess
import sys

import jax
import lm_eval
import pytest

from flan_jax.harness import FlanJaxLM
from flan_jax.model import partitioning
from tests import conftest
from tests.end_to_end.test_multiprocess import free_port
from tests.harness import test_harness as harness_tests

TASKS = ["fj_mc", "fj_ppl", "fj_gen"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("harness_multihost")
  model = str(base / "llama")
  harness_tests.build(model)
  harness_tests.write_tasks(base)
  return model, base


@pytest.fixture(scope="module")
def two_processes(setup, tmp_path_factory):
  model, base = setup
  out = tmp_path_factory.mktemp("results")
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=conftest.xla_flags(2), **OFFLINE)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "flan_jax.harness", "--model_args", f"checkpoint={model},batch_size=4,add_bos_token=True",
       "--tasks", ",".join(TASKS), "--include_path", str(base), "--output_path", str(out), "--log_samples",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=conftest.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs, strict=True):
    assert p.returncode == 0, stderr[-3000:]
  return out, outs


def test_two_processes_report_what_one_process_reports(setup, two_processes, monkeypatch):
  model, base = setup
  out, outs = two_processes
  results, = glob.glob(str(out / "**" / "results_*.json"), recursive=True)  # one process wrote, once
  with open(results) as f:
    theirs = json.load(f)
  assert theirs["config"]["flan_jax_mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}  # both processes' devices
  assert "|fj_mc" in outs[0][0] and "|fj_mc" not in outs[1][0]  # the table: the first process only
  bar = "Running loglikelihood requests: 100%"  # flan_jax's progress bar: the first process only
  assert bar in outs[0][1] and bar not in outs[1][1]

  for name, value in OFFLINE.items():
    monkeypatch.setenv(name, value)
  from lm_eval.tasks import TaskManager
  one = lm_eval.simple_evaluate(  # this process, on 4 of its devices
      model=FlanJaxLM(checkpoint=model, batch_size=4, add_bos_token=True,
                      mesh=partitioning.make_mesh(devices=jax.devices()[:4])),
      tasks=TASKS, task_manager=TaskManager(include_path=str(base), include_defaults=False), log_samples=True)
  for task in TASKS:
    assert theirs["results"][task] == one["results"][task], task
    samples, = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    with open(samples) as f:  # lm-eval writes each response's numbers as their str()
      written = {s["doc_id"]: _text(s["filtered_resps"]) for s in map(json.loads, f)}
    expected = {s["doc_id"]: _text(s["filtered_resps"]) for s in one["samples"][task]}
    assert written == expected and len(written) >= 6, task


def _text(value):
  """A response with every leaf as its str(): floats to the last digit (repr), bools, strings."""
  return [_text(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
