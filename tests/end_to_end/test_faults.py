"""Faults outside the training loop (docs/reliability.md): a full disk, Ctrl-C, a read-only or unreadable
path and truncated model files end the eval, export and study binaries in one line with their exit code,
and leave no half-written result that a rerun would take for a finished one."""

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import gguf
import jax
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.training import trainer
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from tests.checks import cannot_set_up, one_line, run_main
from tests.conftest import TINY, xla_flags
from tests.end_to_end.test_binaries import ROOT

LENGTHS = {"inputs": 64, "targets": 8}
TASK = "embedded_color_nli_scoring_t0"  # one small scoring task: a short eval


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny run with one checkpoint (step 1), trained in this process on one device."""
  model_dir = str(tmp_path_factory.mktemp("faults") / "run")
  trainer.train(model_dir, mixture_or_task_name="embedded_no_nli_clusters1", task_feature_lengths=LENGTHS,
                train_steps=1, batch_size=4, model_config=TINY, mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
                checkpoint_period=1, async_checkpointing=False)
  return model_dir


def _eval_args(checkpoint, output_dir):
  return ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={checkpoint}", f"--gin.EVAL_OUTPUT_DIR={output_dir}",
          f"--gin.MIXTURE_OR_TASK_NAME={TASK}", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
          "--gin.evaluate.num_examples=8", "--gin.EVAL_BATCH_SIZE=8"]


def _export_args(checkpoint, output_dir):
  return ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={checkpoint}", f"--gin.OUTPUT_DIR={output_dir}",
          "--gin.EXPORT_DTYPE='float32'"]


def _leftovers(directory):
  """Every file under `directory` (relative paths)."""
  return sorted(os.path.relpath(os.path.join(root, f), directory)
                for root, _, names in os.walk(directory) for f in names)


# Runs binaries' mains in one process, one case after another, each case's stderr into its own file; with
# `interrupt`, the process sends itself SIGINT (a real Ctrl-C) in the middle of writing the named output.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys, types
    sys.path.insert(0, {root!r})
    import gin
    from flan_jax import checkpoints, cli, report, study
    from flan_jax.evaluation import predictions
    from flan_jax import eval as eval_binary
    from flan_jax import export as export_binary
    from flan_jax import train as train_binary
    MAINS = {{"eval": eval_binary.main, "export": export_binary.main, "train": train_binary.main, "study": study.main}}

    def interrupt_after(function, calls):
      seen = [0]
      def wrapped(*args, **kwargs):
        seen[0] += 1
        if seen[0] == calls:
          os.kill(os.getpid(), signal.SIGINT)
        return function(*args, **kwargs)
      return wrapped

    def tensors_then_interrupt(*args, **kwargs):
      for i, item in enumerate(hf_tensors(*args, **kwargs)):
        if i == 2:
          os.kill(os.getpid(), signal.SIGINT)
        yield item

    hf_tensors = checkpoints.hf.hf_tensors
    cases, codes = json.load(open(sys.argv[1])), {{}}
    for name, (binary, argv, interrupt) in cases.items():
      checkpoints.hf.hf_tensors = tensors_then_interrupt if interrupt == "export" else hf_tensors
      predictions.json = types.SimpleNamespace(dumps=interrupt_after(json.dumps, 2) if interrupt == "predictions"
                                               else json.dumps)
      gin.clear_config()
      err, saved = os.open(os.path.join(sys.argv[2], name + ".err"), os.O_WRONLY | os.O_CREAT), os.dup(2)
      os.dup2(err, 2)
      try:
        if binary == "report":  # its own argument parser and exit status
          codes[name] = report.main(argv)
        else:
          cli.run(MAINS[binary], argv)
          codes[name] = 0
      except SystemExit as e:
        codes[name] = e.code
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(err)
        os.close(saved)
    json.dump(codes, open(os.path.join(sys.argv[2], "codes.json"), "w"))
    """)


def _run_cases(tmp_path, cases, mounts=""):
  """Runs `cases` ({name: (binary, argv, interrupt)}) through DRIVER after the shell lines `mounts` (in a
  private mount namespace when given); returns ({name: exit code}, {name: stderr})."""
  out = tmp_path / "driver_out"
  out.mkdir()
  (tmp_path / "cases.json").write_text(json.dumps(cases))
  (tmp_path / "driver.py").write_text(DRIVER.format(root=ROOT))
  command = f"{sys.executable} {tmp_path / 'driver.py'} {tmp_path / 'cases.json'} {out}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  argv = ["unshare", "-rm", "sh", "-c", f"{mounts}\n{command}"] if mounts else ["sh", "-c", command]
  done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  codes = json.loads((out / "codes.json").read_text())
  return codes, {name: (out / f"{name}.err").read_text() for name in cases}


def _can_mount_tmpfs(directory) -> bool:
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {directory}"],
                         capture_output=True)
  return probe.returncode == 0


STUDY = """
include 'studies/miniature.gin'
study.sizes = {{'tiny': ['models/tiny.gin']}}
study.seeds = [0]
study.conditions = ['base']
study.cluster_counts = []
study.base_checkpoints = {{'tiny': '{run}'}}
study.tune = {{}}
study.evaluate = {{'TASK_FEATURE_LENGTHS': {lengths}, 'EVAL_SPLITS': ['validation'], 'evaluate.num_examples': 4,
                  'EVAL_BATCH_SIZE': 8}}
study.eval_mixture = '{task}'
"""


def test_full_disk_read_only_disk_and_ctrl_c_are_one_line_and_leave_no_result(run_dir, tmp_path):
  """On a full tmpfs (eval, export, study, report), a read-only one (train, eval, export), and under SIGINT, all
  in one process (a private mount namespace) to pay for the imports once. The report reads predictions that an
  eval wrote first onto a disk with room."""
  full, read_only = tmp_path / "full", tmp_path / "ro"
  full.mkdir()
  read_only.mkdir()
  if not _can_mount_tmpfs(full):
    cannot_set_up("needs unshare and a tmpfs mount in a user namespace")
  study_gin = tmp_path / "study.gin"
  study_gin.write_text(STUDY.format(run=run_dir, lengths=LENGTHS, task=TASK))
  interrupted = tmp_path / "interrupted"
  kept = tmp_path / "kept"
  cases = {
      "eval_kept": ("eval", _eval_args(run_dir, kept), None),
      "report_full": ("report", ["--predictions", f"run={kept}", "--output_dir", str(full / "report"),
                                 "--bootstrap", "10"], None),
      "eval_full": ("eval", _eval_args(run_dir, full / "eval"), None),
      "export_full": ("export", _export_args(run_dir, full / "hf"), None),
      "study_full": ("study", [f"--gin_file={study_gin}", f"--gin.STUDY_DIR='{full / 'study'}'"], None),
      "train_ro": ("train", ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin",
                             f"--gin.MODEL_DIR={read_only / 'run'}",
                             "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", "--gin.BATCH_SIZE=4",
                             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"], None),
      "eval_ro": ("eval", _eval_args(run_dir, read_only / "eval"), None),
      "export_ro": ("export", _export_args(run_dir, read_only / "hf"), None),
      "eval_ctrl_c": ("eval", _eval_args(run_dir, interrupted / "eval"), "predictions"),
      "export_ctrl_c": ("export", _export_args(run_dir, interrupted / "hf"), "export"),
  }
  listing = tmp_path / "left_on_the_full_disk.txt"
  mounts = (f"mount -t tmpfs -o size=256k tmpfs {full}\n"
            f"head -c 1000000 /dev/zero > {full}/filler 2>/dev/null\n"  # fills the disk to its last byte
            f"mount -t tmpfs -o ro,size=256k tmpfs {read_only}\n"
            f"trap 'find {full} -type f > {listing}' EXIT")  # the mounts end with the namespace
  codes, errs = _run_cases(tmp_path, cases, mounts)
  assert codes.pop("eval_kept") == 0 and errs.pop("eval_kept") == ""
  # One line each: no traceback, no library logs.
  lines = {name: one_line(err, f"{name} (exit code {codes[name]})") for name, err in errs.items()}
  for name in ("eval_full", "export_full", "study_full", "report_full"):
    assert codes[name] == 5 and lines[name].startswith("error: no space left on device"), (name, lines[name])
  assert f"while writing {full}/eval/predictions_{TASK}_validation_step1.jsonl;" in lines["eval_full"]
  assert "while writing" in lines["export_full"] and f"{full}/hf/" in lines["export_full"]
  assert f"while writing the report in --output_dir {full}/report;" in lines["report_full"], lines["report_full"]
  for name in ("train_ro", "eval_ro", "export_ro"):
    assert codes[name] == 2 and "Read-only file system" in lines[name] and str(read_only) in lines[name], lines[name]
  for name in ("eval_ctrl_c", "export_ctrl_c"):
    assert codes[name] == 130 and lines[name].startswith("error: interrupted (Ctrl-C)"), lines[name]
  # Nothing half-written is left: no predictions or metrics, no .tmp, no export directory, no done.json.
  assert listing.read_text().split() == [f"{full}/filler"]
  assert _leftovers(interrupted / "eval") == []
  assert not os.path.exists(interrupted / "hf")


def test_an_unreadable_file_is_one_line_naming_it(run_dir, tmp_path, capfd, monkeypatch):
  from flan_jax import eval as eval_binary
  unreadable = os.path.join(run_dir, checkpoints.run_record.MODEL_CONFIG)
  real_open = builtins.open

  def open_as_another_user(path, *args, **kwargs):  # the tests run as root, whom chmod does not stop
    if str(path) == unreadable:
      raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", open_as_another_user)
  code, err = run_main(eval_binary, _eval_args(run_dir, tmp_path / "eval"), capfd)
  assert code == 2 and one_line(err) == f"error: Permission denied: {unreadable}; check its permissions or choose " \
                                         "another path"


def test_a_truncated_safetensors_file_is_one_line(run_dir, tmp_path, capfd):
  from flan_jax import eval as eval_binary
  hf = str(tmp_path / "hf")
  checkpoints.export_checkpoint(run_dir, hf, dtype="float32", mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
  assert checkpoints.open_pretrained(hf).config.d_model == TINY.d_model  # whole, it opens
  weights = os.path.join(hf, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  with pytest.raises(UserError, match=f"{weights} is truncated: .* copy or download it again"):
    checkpoints.open_pretrained(hf)
  # The run was trained with bytes, so its export has no tokenizer: the eval binds that vocabulary.
  bytes_bound = "--gin.run_vocabulary.vocabulary=@byte_vocabulary()"
  code, err = run_main(eval_binary, [*_eval_args(hf, tmp_path / "eval"), bytes_bound], capfd)
  assert code == 2 and "is truncated" in one_line(err)


def test_a_truncated_gguf_file_is_one_line(tmp_path):
  path = str(tmp_path / "cut.gguf")
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(1)
  writer.add_tensor("token_embd.weight", np.ones((64, 384), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(UserError, match="is not a readable GGUF file"):
    checkpoints.open_pretrained(path)


def test_an_interrupted_export_into_an_existing_directory_keeps_it_from_looking_complete(tmp_path):
  from flan_jax import files
  directory = tmp_path / "out"
  directory.mkdir()
  (directory / "config.json").write_text("{}")
  (directory / "notes.txt").write_text("kept")
  with pytest.raises(KeyboardInterrupt):
    with files.removed_on_failure(str(directory)):
      (directory / "model.safetensors").write_text("half")
      raise KeyboardInterrupt
  assert sorted(os.listdir(directory)) == ["notes.txt"]  # the new file and the marker are gone
  with pytest.raises(UserError):
    with files.removed_on_failure(str(directory)):  # a failure before any write touches nothing
      raise UserError("refused")
  assert sorted(os.listdir(directory)) == ["notes.txt"]
