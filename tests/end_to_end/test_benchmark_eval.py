"""Smoke test of scripts/benchmark_eval.py: padded and bucketed eval batches side by side, with the same scores."""

import json
import os
import subprocess
import sys

from tests import conftest
from tests.conftest import xla_flags

ROOT = conftest.ROOT


def test_benchmark_compares_padded_and_bucketed_batches(tmp_path):
  out = tmp_path / "eval.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  proc = subprocess.run(
      [sys.executable, os.path.join("scripts", "benchmark_eval.py"), "--inputs=48", "--targets=8", "--examples=12",
       "--batch_size=4", "--prompt_median=10", "--repeats=1", f"--output={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads(out.read_text())
  assert saved["lengths"] == {"inputs": 48, "targets": 8} and saved["batch_size"] == 4
  rows = {(r["kind"], r["mode"]): r for r in saved["results"]}
  assert sorted(rows) == sorted((k, m) for k in ("score", "predict") for m in ("padded", "bucketed", "compare"))
  for kind, examples in (("score", 24), ("predict", 12)):  # two options per example are scored
    padded, bucketed, compare = (rows[kind, m] for m in ("padded", "bucketed", "compare"))
    assert padded["examples"] == bucketed["examples"] == examples
    assert compare["agree"] is True and compare["max_abs_difference"] < 1e-3
    assert compare["speedup"] == padded["seconds"] / bucketed["seconds"]
    assert padded["examples_per_second"] == examples / padded["seconds"]
    # Padded, one shape of 48 + 8 positions; bucketed, the buckets under it that the batches needed.
    assert padded["compiled_lengths"] == [56]
    assert bucketed["compiled_lengths"] and set(bucketed["compiled_lengths"]) <= {16, 24, 32, 48, 56}
    assert len(set(bucketed["compiled_lengths"])) == len(bucketed["compiled_lengths"])
  assert "speedup" in proc.stdout and "wrote" in proc.stdout
