"""Writes tests/end_to_end/golden_run/ and tests/end_to_end/golden_run_expected.json with the pre-refactor code.

The golden run is a 2-step run of a model smaller than gin/models/tiny.gin on a 3-task embedded mixture,
written by commit 8891771 (before flan_jax/ was split into sub-packages). The expected numbers are what that
same commit's binaries give when they

  (a) resume the run to step 4: the logged metrics of steps 3 and 4, what trained_on.json counts, and the
      step-4 parameters (exported as float32 safetensors: per tensor sum, sum of squares, largest |value|);
  (b) evaluate its step 2 on one generative and one rank-classification task (metrics, and every prediction
      record: prediction, target, scores under every normalisation);
  (c) export its step 2 as a float32 Hugging Face directory (sha256 of every tensor's bytes, config.json,
      generation_config.json).

tests/end_to_end/test_golden_run.py runs the same commands (the functions below) with the current code and
asserts the same numbers. Everything goes through the command-line binaries only, never an internal module.

Regenerate (from the repository root, with the project's venv; about 80 s of CPU time):

    .venv/bin/python tests/end_to_end/make_golden_run.py            # --commit 8891771 --worktree /tmp/golden-wt

It checks out the commit as a git worktree (removed again afterwards unless it already existed), runs the
old binaries with PYTHONPATH=<worktree>:<dir with flan_tasks -> <worktree>/tasks> from the worktree (the
venv's editable install points at this checkout, so the PYTHONPATH entries must come first), with the
tests' environment: JAX_PLATFORMS=cpu, one CPU device, XLA_FLAGS=--xla_backend_optimization_level=0 (as
tests/conftest.py's xla_flags()), and a fresh compilation cache. Then it replaces tests/end_to_end/golden_run/
and tests/end_to_end/golden_run_expected.json. The golden directory is the run as the trainer left it, less its
TensorBoard events and its .lock file (both rewritten by any later run).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

COMMIT = "8891771"
GOLDEN_STEP = 2
RESUME_STEP = 4
LENGTHS = "{'inputs': 64, 'targets': 16}"
MIXTURE = "embedded_no_nli_clusters1"  # 3 tasks: small input positions, and still a mixture
# A model smaller than gin/models/tiny.gin (14,640 parameters): one layer, grouped-query attention.
MODEL = ["--gin.ModelConfig.d_model=16", "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.num_heads=2",
         "--gin.ModelConfig.num_kv_heads=1", "--gin.ModelConfig.head_dim=8", "--gin.ModelConfig.d_ff=32"]
# The eval mixture: one decoded and one rank-classified task, registered from gin (docs/tasks.md).
EVAL_GIN = """import flan_tasks.user
MIXTURE_OR_TASK_NAME = @flan_tasks.user.mixture()
flan_tasks.user.mixture.name = 'golden_eval'
flan_tasks.user.mixture.tasks = ['embedded_color_nli_eval_t0', 'embedded_color_nli_scoring_t0']
"""
EVAL_NAME = "golden_eval"
EVAL_EXAMPLES = 6  # seqio counts rows: 6 decoded examples, 2 scored examples of 3 options each
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"  # tests/conftest.py's xla_flags(): one device
METRIC_KEYS = ("loss", "accuracy", "grad_norm", "learning_rate", "target_tokens")


# ------------------------------------------------------------------ the commands (old and new code alike)

def train_args(model_dir: str, steps: int) -> list[str]:
  return ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin", *MODEL, f"--gin.MODEL_DIR={model_dir}",
          f"--gin.MIXTURE_OR_TASK_NAME={MIXTURE}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=2",
          f"--gin.CHECKPOINT_PERIOD={GOLDEN_STEP}", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
          "--gin.train.log_every=1"]


def eval_args(checkpoint: str, output_dir: str, eval_gin: str) -> list[str]:
  """No model gin file: the model config and the vocabulary follow the run's record."""
  return ["--gin_file=runs/eval.gin", f"--gin_file={eval_gin}", f"--gin.CHECKPOINT_PATH={checkpoint}",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.evaluate.num_examples={EVAL_EXAMPLES}",
          "--gin.EVAL_BATCH_SIZE=4", f"--gin.EVAL_OUTPUT_DIR={output_dir}"]


def export_args(checkpoint: str, output_dir: str) -> list[str]:
  return ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={checkpoint}", f"--gin.OUTPUT_DIR={output_dir}",
          "--gin.EXPORT_DTYPE='float32'"]


# ------------------------------------------------------------------ what is compared

def train_metrics(model_dir: str, steps) -> dict:
  """The logged METRIC_KEYS of `steps` from MODEL_DIR/train_metrics.jsonl (the last record of each step)."""
  found = {}
  with open(os.path.join(model_dir, "train_metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["step"] in steps:
        found[str(record["step"])] = {k: record[k] for k in METRIC_KEYS}
  return found


def trained_on(model_dir: str) -> dict:
  """trained_on.json's step, totals and per-task counts (integers and fractions of them)."""
  with open(os.path.join(model_dir, "trained_on.json")) as f:
    record = json.load(f)
  return {"step": record["step"], "totals": record["totals"], "tasks": record["tasks"]}


def checkpoint_steps(model_dir: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(model_dir, "checkpoints")) if d.isdigit())


def export_summary(hf_dir: str) -> dict:
  """Every file of a Hugging Face export: JSON files parsed, each tensor's dtype, shape, sha256 of its
  bytes and float64 sum, sum of squares and largest |value|."""
  import numpy as np
  from safetensors import safe_open

  files, tensors = {}, {}
  for name in sorted(os.listdir(hf_dir)):
    path = os.path.join(hf_dir, name)
    if name.endswith(".safetensors"):
      with safe_open(path, "np") as f:
        for key in f.keys():
          x = f.get_tensor(key)
          wide = x.astype(np.float64)
          tensors[key] = {"file": name, "dtype": str(x.dtype), "shape": list(x.shape),
                          "sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
                          "sum": float(wide.sum()), "sum_sq": float((wide * wide).sum()),
                          "abs_max": float(np.abs(wide).max())}
      files[name] = "safetensors"
    elif name.endswith(".json"):
      with open(path) as f:
        files[name] = json.load(f)
    else:
      with open(path, "rb") as f:
        files[name] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
  return {"files": files, "tensors": tensors}


def eval_summary(output_dir: str, step: int) -> dict:
  """The eval report's step, metrics and average, and every prediction record without its paths."""
  stem = f"{EVAL_NAME}_validation_step{step}"
  with open(os.path.join(output_dir, f"eval_{stem}.json")) as f:
    report = json.load(f)
  with open(os.path.join(output_dir, f"predictions_{stem}.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    del r["run"], r["checkpoint"]  # paths of the machine that ran it
  records.sort(key=lambda r: (r["task"], r["example_id"]))
  return {"step": report["step"], "mixture_or_task_name": report["mixture_or_task_name"],
          "example_format": report["example_format"], "metrics": report["metrics"], "average": report["average"],
          "records": records}


# ------------------------------------------------------------------ regeneration with the old code

def _old_binary(worktree: str, env: dict, name: str, args: list[str]) -> str:
  out = subprocess.run([sys.executable, "-m", f"flan_jax.{name}", *args], cwd=worktree, env=env,
                       capture_output=True, text=True, timeout=600)
  if out.returncode:
    raise SystemExit(f"flan_jax.{name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
  return out.stdout


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--commit", default=COMMIT)
  parser.add_argument("--worktree", default="/tmp/golden-wt")
  flags = parser.parse_args()
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  data = os.path.join(repo, "tests", "end_to_end")
  created = not os.path.exists(flags.worktree)
  if created:
    subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", flags.worktree, flags.commit], check=True)
  work = tempfile.mkdtemp(prefix="golden_run_")
  try:
    path_dir = os.path.join(work, "pythonpath")
    os.makedirs(path_dir)
    os.symlink(os.path.join(flags.worktree, "tasks"), os.path.join(path_dir, "flan_tasks"))
    env = dict(os.environ, PYTHONPATH=f"{flags.worktree}:{path_dir}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=TEST_XLA_FLAGS,
               JAX_COMPILATION_CACHE_DIR=os.path.join(work, "jit_cache"))
    where = subprocess.run([sys.executable, "-c", "import flan_jax.trainer, flan_tasks.embedded as e; "
                            "print(flan_jax.trainer.__file__); print(e.__file__)"],
                           cwd=flags.worktree, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(os.path.realpath(p).startswith(os.path.realpath(flags.worktree) + os.sep) for p in where), where
    commit = subprocess.run(["git", "-C", flags.worktree, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()

    golden = os.path.join(work, "golden_run")
    _old_binary(flags.worktree, env, "train", train_args(golden, GOLDEN_STEP))
    shutil.rmtree(os.path.join(golden, "tensorboard"))
    os.remove(os.path.join(golden, ".lock"))
    assert checkpoint_steps(golden) == [GOLDEN_STEP]

    resumed = os.path.join(work, "resumed")
    shutil.copytree(golden, resumed)
    out = _old_binary(flags.worktree, env, "train", train_args(resumed, RESUME_STEP))
    assert f"resumed from step {GOLDEN_STEP}" in out, out
    _old_binary(flags.worktree, env, "export", export_args(os.path.join(resumed, "checkpoints", str(RESUME_STEP)),
                                                           os.path.join(work, "hf_resumed")))
    eval_gin = os.path.join(work, "golden_eval.gin")
    with open(eval_gin, "w") as f:
      f.write(EVAL_GIN)
    checkpoint = os.path.join(golden, "checkpoints", str(GOLDEN_STEP))
    _old_binary(flags.worktree, env, "eval", eval_args(checkpoint, os.path.join(work, "eval"), eval_gin))
    _old_binary(flags.worktree, env, "export", export_args(checkpoint, os.path.join(work, "hf")))

    expected = {
        "generated_by": f"tests/end_to_end/make_golden_run.py with commit {commit}",
        "commit": commit,
        "golden_step": GOLDEN_STEP,
        "resume": {"train_steps": RESUME_STEP,
                   "checkpoints": checkpoint_steps(resumed),
                   "metrics": train_metrics(resumed, range(GOLDEN_STEP + 1, RESUME_STEP + 1)),
                   "trained_on": trained_on(resumed),
                   "export": export_summary(os.path.join(work, "hf_resumed"))},
        "eval": eval_summary(os.path.join(work, "eval"), GOLDEN_STEP),
        "export": export_summary(os.path.join(work, "hf")),
    }
    target = os.path.join(data, "golden_run")
    if os.path.exists(target):
      shutil.rmtree(target)
    shutil.copytree(golden, target)
    with open(os.path.join(data, "golden_run_expected.json"), "w") as f:
      json.dump(expected, f, indent=1, sort_keys=True)
      f.write("\n")
    print(f"wrote {target} and {os.path.join(data, 'golden_run_expected.json')}")
  finally:
    shutil.rmtree(work, ignore_errors=True)
    if created:
      subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", flags.worktree], check=False)


if __name__ == "__main__":
  main()
