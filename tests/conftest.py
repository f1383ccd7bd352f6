"""Test setup: 8 simulated CPU devices (before JAX starts), quiet TensorFlow, and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk, so the binaries' subprocesses that build the same tiny
# model (and reruns of the suite) skip recompiling it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"flan_jax_test_jit_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from flan_jax.model import ModelConfig  # noqa: E402

TINY = ModelConfig(vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, d_ff=192)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
  return TINY
