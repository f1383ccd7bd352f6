"""Backwards compatibility: a run written by the code before the sub-package split (commit 8891771) is
resumed, evaluated and exported by today's binaries with the numbers that commit's binaries gave.

tests/end_to_end/golden_run/ is that commit's 2-step run of a 14,640-parameter model on a 3-task embedded mixture;
tests/end_to_end/golden_run_expected.json holds what the old binaries gave on it. tests/end_to_end/make_golden_run.py
wrote both and holds the commands (shared with this test) and the summaries compared; rerun it to regenerate.
Only the command-line binaries are run (`python -m flan_jax.<command>`), never an internal module, so the
test holds whatever the modules behind the commands are called.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "end_to_end")
GOLDEN = os.path.join(DATA, "golden_run")
RTOL = 1e-6  # numbers the new code computes again (losses, gradient norms, scores, trained parameters)

_spec = importlib.util.spec_from_file_location("make_golden_run", os.path.join(DATA, "make_golden_run.py"))
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


def _start(name, args, log_dir):
  """Starts `python -m flan_jax.<name>` as tests/end_to_end/test_binaries.py runs the binaries (one CPU device)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  out, err = open(log_dir / f"{name}.out", "w+"), open(log_dir / f"{name}.err", "w+")
  return subprocess.Popen([sys.executable, "-m", f"flan_jax.{name}", *map(str, args)], cwd=ROOT, env=env,
                          stdout=out, stderr=err, text=True), out, err


def _finish(job, timeout=300):
  proc, out, err = job
  with out, err:
    code = proc.wait(timeout=timeout)
    out.seek(0)
    err.seek(0)
    return code, out.read(), err.read()


@pytest.fixture(scope="module")
def expected():
  with open(os.path.join(DATA, "golden_run_expected.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """The four binaries on copies of the golden run: train (resume to step 4), eval and export of its step 2
  side by side (2 cores), then export of the resumed step 4."""
  work = tmp_path_factory.mktemp("golden")
  resumed, golden = work / "resumed", work / "golden"  # train writes into one; eval and export read the other
  shutil.copytree(GOLDEN, resumed)
  shutil.copytree(GOLDEN, golden)
  eval_gin = work / "golden_eval.gin"
  eval_gin.write_text(make.EVAL_GIN)
  step = golden / "checkpoints" / str(make.GOLDEN_STEP)
  jobs = {"train": _start("train", make.train_args(resumed, make.RESUME_STEP), work),
          "eval": _start("eval", make.eval_args(step, work / "eval", eval_gin), work),
          "export": _start("export", make.export_args(step, work / "hf"), work)}
  results = {name: _finish(job) for name, job in jobs.items()}
  if results["train"][0] == 0:
    last = resumed / "checkpoints" / str(make.RESUME_STEP)
    (work / "second").mkdir()
    results["export_resumed"] = _finish(_start("export", make.export_args(last, work / "hf_resumed"),
                                               work / "second"))
  return work, results


def _ok(ran, name):
  code, out, err = ran[1][name]
  assert code == 0, f"flan_jax {name} exited {code}:\n{err[-3000:]}"
  return out


def _close(actual, expected, rtol, where="") -> None:
  """`actual` equals `expected`, floats within `rtol` (and 1e-9 absolute), everything else exactly."""
  if isinstance(expected, dict):
    assert isinstance(actual, dict) and sorted(actual) == sorted(expected), (where, actual, expected)
    for key in expected:
      _close(actual[key], expected[key], rtol, f"{where}.{key}")
  elif isinstance(expected, list):
    assert isinstance(actual, list) and len(actual) == len(expected), (where, actual, expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
      _close(a, e, rtol, f"{where}[{i}]")
  elif isinstance(expected, float) and not isinstance(actual, bool) and isinstance(actual, (int, float)):
    assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=1e-9), (where, actual, expected)
  else:
    assert actual == expected, (where, actual, expected)


def test_resume_continues_the_golden_run(ran, expected):
  out = _ok(ran, "train")
  resumed = str(ran[0] / "resumed")
  assert f"resumed from step {make.GOLDEN_STEP}" in out, out[-2000:]
  assert "no saved input position" not in out, out[-2000:]  # it restored the pipeline at step 2
  want = expected["resume"]
  assert make.checkpoint_steps(resumed) == want["checkpoints"]
  # Steps 3 and 4: the restored parameters, optimizer state and input position, trained on.
  _close(make.train_metrics(resumed, range(make.GOLDEN_STEP + 1, make.RESUME_STEP + 1)), want["metrics"], RTOL)
  assert make.trained_on(resumed) == want["trained_on"]  # the same batches, counted on from step 2's tally


def test_resumed_parameters_are_the_old_codes(ran, expected):
  _ok(ran, "train")
  _ok(ran, "export_resumed")
  summary = make.export_summary(str(ran[0] / "hf_resumed"))
  want = expected["resume"]["export"]
  assert summary["files"] == want["files"]
  assert sorted(summary["tensors"]) == sorted(want["tensors"])
  for name, tensor in summary["tensors"].items():
    other = dict(want["tensors"][name])
    for key in ("dtype", "shape", "file"):
      assert tensor[key] == other[key], (name, key)
    scale = other["abs_max"] * math.prod(other["shape"])  # a sum's error grows with its terms
    assert math.isclose(tensor["sum"], other["sum"], rel_tol=RTOL, abs_tol=RTOL * scale), (name, tensor, other)
    for key in ("sum_sq", "abs_max"):
      assert math.isclose(tensor[key], other[key], rel_tol=RTOL), (name, key, tensor, other)


def test_eval_of_the_golden_checkpoint_gives_the_same_metrics_and_predictions(ran, expected):
  _ok(ran, "eval")
  summary = make.eval_summary(str(ran[0] / "eval"), make.GOLDEN_STEP)
  want = expected["eval"]
  assert summary["metrics"] == want["metrics"] and summary["average"] == want["average"]
  assert {k: summary[k] for k in ("step", "mixture_or_task_name", "example_format")} == {
      k: want[k] for k in ("step", "mixture_or_task_name", "example_format")}
  assert {r["kind"] for r in summary["records"]} == {"generative", "scoring"}
  # Prompts, decoded predictions and targets exactly; option scores under every normalisation within RTOL.
  _close(summary["records"], want["records"], RTOL, "records")


def test_export_of_the_golden_checkpoint_is_bit_identical(ran, expected):
  _ok(ran, "export")
  summary = make.export_summary(str(ran[0] / "hf"))
  assert summary["files"] == expected["export"]["files"]  # config.json, generation_config.json, the weights
  assert summary["tensors"] == expected["export"]["tensors"]  # names, dtypes, shapes, sha256 of the bytes
