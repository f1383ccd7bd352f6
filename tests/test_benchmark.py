"""Smoke test of scripts/benchmark_train.py: it runs on a sharded CPU mesh and writes its JSON."""

import importlib.util
import json
import os

import gin
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_consistent_figures(tmp_path):
  spec = importlib.util.spec_from_file_location("benchmark_train", os.path.join(ROOT, "scripts", "benchmark_train.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "bench.json"
  try:
    result = bench.main(["--gin_file=models/tiny.gin", "--gin_file", "mesh/cpu8.gin", "--batch_size=8",
                         "--seq_len=64", "--steps=2", "--warmup=1", "--matmul_size=256", f"--output={out}",
                         "--gin.ModelConfig.remat_policy=full"])  # the binaries' gin flags
  finally:
    gin.clear_config()
  saved = json.load(open(out))
  assert saved["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and saved["num_devices"] == 8
  assert saved["remat_policy"] == "full"
  assert saved["tokens_per_second"] == 8 * 64 / saved["step_seconds_median"]
  peak = 8 * saved["peak_flops_per_device_measured"]
  expected_mfu = saved["model_flops_per_step"] / saved["step_seconds_median"] / peak
  assert abs(saved["mfu"] - expected_mfu) < 1e-12 and saved["mfu"] > 0
  assert saved["peak_memory_bytes"] > 0 and result["final_loss"] > 0


def test_benchmark_compares_with_torch(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  spec = importlib.util.spec_from_file_location("benchmark_train", os.path.join(ROOT, "scripts", "benchmark_train.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "bench.json"
  try:  # the default mesh spans all 8 simulated devices, so the batch is 8
    bench.main(["--gin_file=models/tiny.gin", "--batch_size=8", "--seq_len=32", "--steps=2", "--warmup=1",
                "--matmul_size=128", "--compare_torch", "--torch_threads=1", f"--output={out}"])
  finally:
    gin.clear_config()
  saved = json.load(open(out))
  torch_result = saved["torch"]
  assert torch_result["tokens_per_second"] > 0 and torch_result["threads"] == 1
  assert torch_result["tokens_per_second"] == 8 * 32 / torch_result["step_seconds_median"]
  assert saved["ratio_vs_torch"] == saved["tokens_per_second"] / torch_result["tokens_per_second"]
  assert saved["params"] == saved["params_flan_jax"] == torch_result["params"]
  assert torch_result["architecture"] == "LlamaForCausalLM" and torch_result["final_loss"] > 0


def test_resume_benchmark_restores_the_same_batch_as_skipping(tmp_path):
  path = os.path.join(ROOT, "scripts", "benchmark_resume.py")
  spec = importlib.util.spec_from_file_location("benchmark_resume", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "resume.json"
  rows = bench.main(["--task=embedded_no_topic", "--steps=2,5", "--batch_size=4", "--inputs=64", "--targets=16",
                     f"--output={out}"])
  assert [r["step"] for r in rows] == [2, 5] and all(r["same_batch"] for r in rows)
  assert json.load(open(out))["results"] == rows
