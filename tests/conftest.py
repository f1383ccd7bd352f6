"""Test setup: 8 simulated CPU devices (before JAX starts), quiet TensorFlow, and shared fixtures."""

import os

# LLVM's optimisations off: the tests' programs are tiny and run a few steps each, so compiling them is most
# of the suite's time (measured on 2 cores, compile cache empty: test_trainer.py and test_evaluation.py 136 s
# -> 103 s; a tiny model's train step compiles in 2.0 s instead of 4.1 s and runs in 63 ms instead of 21 ms).
# XLA's own passes, and with them every fusion and sharding decision, are unchanged.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int = 0) -> str:
  """XLA_FLAGS for a test's subprocess: the tests' flags, and `devices` simulated CPU devices (0: one)."""
  return TEST_XLA_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices else "")


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk, so the binaries' subprocesses that build the same tiny
# model (and reruns of the suite) skip recompiling it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"flan_jax_test_jit_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from flan_jax.model.transformer import ModelConfig  # noqa: E402

TINY = ModelConfig(vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, d_ff=192)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
  return TINY


# The longest test files on 2 cores, longest first (from `pytest --durations=0`, summed per file). `make test`
# hands whole files to its workers (pytest-xdist, --dist loadfile) in collection order, so these start first
# and the short ones fill in at the end, instead of one worker finishing a long file alone.
LONGEST_FIRST = ("test_bucket_multiprocess.py", "test_reliability.py", "test_study.py", "test_multiprocess.py",
                 "test_bucket_faults.py", "test_flan_tasks.py", "test_bucket_models.py", "test_bucket_study.py",
                 "test_bucket_eval.py", "test_bucket_s3.py", "test_run_lock_bucket.py",
                 "test_lora.py", "test_binaries.py", "test_bucket.py", "test_pretrained.py", "test_trainer.py",
                 "test_golden_run.py", "test_checkpointing.py", "test_formats.py", "test_accounting.py", "test_data.py",
                 "test_benchmark.py", "test_faults.py", "test_model.py", "test_evaluation.py", "test_gguf_export.py",
                 "test_user_tasks.py", "test_embedded.py", "test_divergence.py", "test_flan_labels.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


# Skips. A test skips only where this machine lacks what it needs (an accelerator, an optional package, a user
# namespace for a tmpfs). Under CI (the CI environment variable, which .ci/run sets) the only skips allowed are
# the accelerator-only tests; any other skip fails the run, so a missing package or a refused mount cannot turn
# a fault test into a silent pass. Every run prints how many tests skipped and why.
ACCELERATOR_ONLY = re.compile(r"\b(GPU|TPU)\b")
_skipped: dict[str, str] = {}


def pytest_runtest_logreport(report):
  if report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _skipped[report.nodeid] = reason.removeprefix("Skipped: ")


def _unexpected_skips() -> dict[str, str]:
  return {node: reason for node, reason in _skipped.items() if not ACCELERATOR_ONLY.search(reason)}


def pytest_sessionfinish(session, exitstatus):
  if os.environ.get("CI") and not hasattr(session.config, "workerinput") and _unexpected_skips() and exitstatus == 0:
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  if hasattr(config, "workerinput"):
    return
  unexpected = _unexpected_skips()
  terminalreporter.write_line(f"skipped: {len(_skipped)} ({len(_skipped) - len(unexpected)} need a GPU or TPU, "
                              f"{len(unexpected)} other)")
  for node, reason in sorted(unexpected.items()):
    terminalreporter.write_line(f"  {'FAILED (CI is set)' if os.environ.get('CI') else 'skipped'}: {node}: {reason}")


from tests.storage_server import gcs_bucket, gcs_dir, gcs_server  # noqa: E402,F401  (fixtures: a local GCS server)
