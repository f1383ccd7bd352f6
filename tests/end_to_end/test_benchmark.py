"""Smoke test of scripts/benchmark_train.py: it runs on a sharded CPU mesh and writes its JSON."""

import importlib.util
import json
import os
import subprocess
import sys

import gin
import pytest

from tests import conftest

ROOT = conftest.ROOT


def test_benchmark_writes_consistent_figures(tmp_path):
  spec = importlib.util.spec_from_file_location("benchmark_train", os.path.join(ROOT, "scripts", "benchmark_train.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "bench.json"
  try:
    result = bench.main(["--gin_file=models/tiny.gin", "--gin_file", "mesh/cpu8.gin", "--batch_size=8",
                         "--seq_len=64", "--steps=2", "--warmup=1", "--matmul_size=256", f"--output={out}",
                         "--gin.ModelConfig.remat_policy=full", "--profile_top=5"])  # the binaries' gin flags
  finally:
    gin.clear_config()
  saved = json.load(open(out))
  assert saved["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and saved["num_devices"] == 8
  assert saved["remat_policy"] == "full" and saved["scan_layers"] is False and saved["attention"] == "einsum"
  # The profile splits op time into the forward pass, the backward pass and the rest, and names the top ops.
  profile = saved["profile"]
  assert profile["ms_per_step_by_phase"]["forward"] > 0 and profile["ms_per_step_by_phase"]["backward"] > 0
  assert abs(sum(profile["ms_per_step_by_phase"].values()) - profile["ops_ms_per_step_summed"]) < 1e-6
  assert len(profile["top_ops"]) == 5 and all(op["shape"] != "?" and op["source"] for op in profile["top_ops"])
  assert [op["ms_per_step"] for op in profile["top_ops"]] == sorted((op["ms_per_step"] for op in profile["top_ops"]),
                                                                    reverse=True)
  assert saved["tokens_per_second"] == 8 * 64 / saved["step_seconds_median"]
  peak = 8 * saved["peak_flops_per_device_measured"]
  expected_mfu = saved["model_flops_per_step"] / saved["step_seconds_median"] / peak
  assert abs(saved["mfu"] - expected_mfu) < 1e-12 and saved["mfu"] > 0
  assert saved["peak_memory_bytes"] > 0 and result["final_loss"] > 0
  # Parameters and optimizer state are split over fsdp=2 and tensor=2 and copied over data=2.
  assert saved["state_bytes_even_split"] == saved["state_bytes_total"] / 8
  assert saved["state_bytes_per_device_min"] <= saved["state_bytes_per_device_max"]
  assert saved["state_bytes_total"] / 4 <= saved["state_bytes_per_device_max"] <= saved["state_bytes_total"] / 2


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


def test_ops_benchmark_times_the_same_kernels_in_both(tmp_path):
  pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location("benchmark_ops", os.path.join(ROOT, "scripts", "benchmark_ops.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "ops.json"
  try:
    bench.main(["--gin_file=models/tiny.gin", "--batch_size=2", "--seq_len=16", "--repeats=2", "--threads=1",
                f"--output={out}"])
  finally:
    gin.clear_config()
  kernels = json.load(open(out))["kernels"]
  assert len(kernels) == 10 and "[32, 64] x [64, 192]" in kernels[1]["shape"]  # tiny: d_model 64, d_ff 192
  for k in kernels:
    assert k["jax_ms"] > 0 and k["torch_ms"] > 0 and k["jax_speed_vs_torch"] == k["torch_ms"] / k["jax_ms"]
    assert k["relative_difference"] < 1e-5, k


def test_resume_benchmark_restores_the_same_batch_as_skipping(tmp_path):
  path = os.path.join(ROOT, "scripts", "benchmark_resume.py")
  spec = importlib.util.spec_from_file_location("benchmark_resume", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "resume.json"
  rows = bench.main(["--task=embedded_no_topic", "--steps=3", "--batch_size=4", "--inputs=64", "--targets=16",
                     f"--output={out}"])
  assert [r["step"] for r in rows] == [3] and all(r["same_batch"] for r in rows)
  assert json.load(open(out))["results"] == rows


WITHOUT_TENSORFLOW = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("benchmark_train", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "seqio"})
assert not loaded, f"importing scripts/benchmark_train.py imported {loaded}"
sys.modules["tensorflow"] = sys.modules["seqio"] = None  # as where they are not installed: importing them fails
bench.main(["--gin_file=models/tiny.gin", "--batch_size=8", "--seq_len=16", "--steps=1", "--warmup=1",
            "--matmul_size=64", "--output=" + sys.argv[2]])
"""


def test_benchmark_needs_neither_tensorflow_nor_seqio(tmp_path):
  """The train benchmark imports and runs on a machine with JAX but no TensorFlow or seqio (a GPU host)."""
  out = tmp_path / "bench.json"
  run = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, os.path.join(ROOT, "scripts", "benchmark_train.py"),
                        str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.load(open(out))["tokens_per_second"] > 0


@pytest.mark.parametrize("mixture, mock", [("embedded_no_topic", False), ("flan_cb", True)])
def test_pipeline_benchmark_runs_on_a_few_batches(tmp_path, mixture, mock):
  spec = importlib.util.spec_from_file_location("benchmark_pipeline",
                                                os.path.join(ROOT, "scripts", "benchmark_pipeline.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "pipeline.json"
  try:
    bench.main([f"--mixture={mixture}", "--gin_file=models/tiny.gin", "--batch_size=8", "--inputs=64", "--targets=16",
                "--batches=2", "--warmup_batches=1", "--steps=2", "--warmup=1", f"--output={out}"]
               + (["--mock_tfds", "--mock_examples=4"] if mock else []))
  finally:
    gin.clear_config()
  saved = json.load(open(out))
  assert saved["mixture"] == mixture and saved["mock_tfds"] == mock and saved["pipeline"]["batches_timed"] == 2
  assert saved["ratio"] == saved["pipeline"]["tokens_per_second"] / saved["trainer"]["tokens_per_second"]
  assert 0 < saved["pipeline"]["packing_efficiency"] <= 1 and saved["trainer"]["fed_tokens_per_second"] > 0


def test_lora_benchmark_measures_what_the_shapes_say(tmp_path):
  """--lora_rank: full fine-tuning and LoRA on a float, an int8 and an NF4 base, each in its own process on an
  fsdp mesh; the measured parameter, optimizer-state and frozen-base bytes are what lora.train_state_bytes says."""
  out = tmp_path / "lora.json"
  run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_train.py"),
                        "--gin_file=models/tiny.gin", "--gin.make_mesh.fsdp=4", "--gin.make_mesh.data=2",
                        "--lora_rank=4", "--gin.LoraConfig.targets=['q', 'v', 'down']", "--batch_size=8",
                        "--seq_len=16", "--steps=1", "--warmup=1", "--matmul_size=64", f"--output={out}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "LoRA, NF4 base" in run.stdout and "tokens/s over full" in run.stdout
  variants = json.load(open(out))["variants"]
  assert list(variants) == ["full", "lora", "lora_int8", "lora_nf4"]
  for name, r in variants.items():
    computed = r["computed_bytes"]
    assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and r["tokens_per_second"] > 0
    # The state adds only optax's step counters (two int32 scalars) to the parameters and moments.
    assert r["state_bytes_total"] == computed["params"] + computed["opt_state"] + 8, name
    assert r["frozen_bytes_total"] == computed["base"], name
    assert r["frozen_bytes_per_device_max"] <= computed["base"] / 2  # the base is sharded, not copied
  assert variants["full"]["lora"] is None and variants["lora"]["lora"]["targets"] == ["q", "v", "down"]
  assert variants["lora_int8"]["lora"]["base_quantization"] == "int8"
  assert variants["lora_nf4"]["lora"]["base_quantization"] == "nf4"
  trained = [variants[v]["trained_params"] for v in variants]
  assert trained[1] == trained[2] == trained[3] < trained[0] / 10
  frozen = [variants[v]["frozen_bytes_total"] for v in ("lora", "lora_int8", "lora_nf4")]
  assert frozen[0] > frozen[1] > frozen[2] > 0


def test_lora_benchmark_bad_rank_is_one_line(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_train.py"),
                        "--gin_file=models/tiny.gin", "--lora_rank=100", "--output=x.json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
  assert "LoraConfig.rank=100 is larger than" in run.stderr and not (tmp_path / "x.json").exists()


def test_readme_memory_table_is_the_computed_one():
  spec = importlib.util.spec_from_file_location("memory_table", os.path.join(ROOT, "scripts", "memory_table.py"))
  table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(table)
  expected = table.markdown(table.rows(16), 16)
  with open(os.path.join(ROOT, "README.md")) as f:
    assert expected in f.read(), "README's memory table is stale: paste the output of scripts/memory_table.py"


def test_checkpoint_benchmark_times_both_backends(tmp_path, gcs_server):
  """scripts/benchmark_checkpoint.py on the tiny model, on local disk and on the session's GCS server."""
  spec = importlib.util.spec_from_file_location("benchmark_checkpoint",
                                                os.path.join(ROOT, "scripts", "benchmark_checkpoint.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "checkpoint.json"
  try:
    bench.main(["--models=tiny", "--backends=local,gcs", f"--gcs_url={gcs_server.url}", "--repeats=2", "--steps=2",
                "--warmup=1", "--batch_size=8", "--seq_len=16", f"--local_dir={tmp_path}", f"--output={out}"])
  finally:
    gin.clear_config()
  saved = json.load(open(out))
  assert [(r["model"], r["backend"]) for r in saved["results"]] == [("tiny", "local"), ("tiny", "gcs")]
  for r in saved["results"]:
    assert r["restored_equal"] and r["params"] == conftest.TINY.num_params()
    for key in ("state_mib", "checkpoint_mib", "save_seconds", "restore_seconds", "save_mib_per_second",
                "restore_mib_per_second", "save_call_seconds", "step_seconds_without_save",
                "train_seconds_lost_per_save"):
      assert r[key] > 0, (r["backend"], key, r[key])
    assert r["save_mib_per_second"] == r["checkpoint_mib"] / r["save_seconds"]
    assert len(r["save_seconds_all"]) == len(r["steps_during_save"]) == 2
  assert os.listdir(tmp_path) == ["checkpoint.json"]  # every checkpoint written was deleted
