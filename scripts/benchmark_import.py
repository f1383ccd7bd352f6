"""Benchmark: import time and peak host memory of a Hugging Face checkpoint, beside transformers.

    python scripts/benchmark_import.py --model=models/smollm2_360m.gin --output=/tmp/import.json
    python scripts/benchmark_import.py --hf_dir=/path/to/Llama-3.2-1B --meshes=1,fsdp8

Without --hf_dir it first writes a randomly initialised model of the gin file's shapes (bf16
safetensors, as published checkpoints are) with transformers. Each measurement runs in a fresh
process, so peak resident memory is that step's alone; flan_jax imports into float32 parameters.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILD = """
import json, sys, torch, transformers
shape = json.loads(sys.argv[1])
classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}
config = classes[shape.pop("model_type")](**shape)
with torch.device("cpu"):
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(sys.argv[2], max_shard_size="1GB")
print("{}")
"""

IMPORT = """
import json, sys, time
import jax
from flan_jax.checkpoints import restore
from flan_jax.model import partitioning
mesh = {"1": dict(devices=jax.devices()[:1]), "fsdp8": dict(data=1, fsdp=8)}[sys.argv[2]]
before = restore.peak_host_memory_gib()
began = time.time()
p = restore.open_pretrained(sys.argv[1])
params = restore.load_params(p, partitioning.make_mesh(**mesh))
jax.block_until_ready(params)
wq = params["layers"]["attn"]["wq"]
print(json.dumps({"seconds": time.time() - began, "peak_host_gib": restore.peak_host_memory_gib(),
                  "before_gib": before,
                  "per_device_gib": sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params)) / 2**30,
                  "shard_shape_wq": list(wq.sharding.shard_shape(wq.shape))}))
"""

TORCH_LOAD = """
import json, resource, sys, time, torch, transformers
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
before = peak()
began = time.time()
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
print(json.dumps({"seconds": time.time() - began, "peak_host_gib": peak(), "before_gib": before}))
"""


def hf_shape(gin_file: str) -> dict:
  """The transformers config of a gin model file (via ModelConfig and the export mapping)."""
  import gin
  sys.path.insert(0, ROOT)
  from flan_jax import checkpoints
  from flan_jax.model.transformer import ModelConfig
  gin.add_config_file_search_path(os.path.join(ROOT, "gin"))
  logging.disable(logging.ERROR)  # gin logs every search-path miss before it finds the file
  gin.parse_config_file(gin_file)
  logging.disable(logging.NOTSET)
  config = ModelConfig()
  hf = checkpoints.hf_config(config, bos_id=1, eos_id=2, dtype="bfloat16")
  hf.pop("architectures")
  hf.pop("torch_dtype")
  return hf


def child(code: str, *args: str, devices: int = 1) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="models/smollm2_135m.gin", help="gin model file (shapes)")
  parser.add_argument("--hf_dir", help="an existing Hugging Face model directory to import instead")
  parser.add_argument("--meshes", default="1,fsdp8", help="comma-separated: 1 (one device), fsdp8")
  parser.add_argument("--output", help="write the results as JSON here")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as scratch:
    directory = args.hf_dir
    if not directory:
      directory = os.path.join(scratch, "model")
      child(BUILD, json.dumps(hf_shape(args.model)), directory)
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))
    rows = [("transformers from_pretrained (f32)", child(TORCH_LOAD, directory))]
    for mesh in args.meshes.split(","):
      rows.append((f"flan_jax import, mesh {mesh} (f32)", child(IMPORT, directory, mesh, devices=8)))

  print(f"checkpoint: {args.hf_dir or args.model}, {size / 2**30:.2f} GiB of safetensors")
  print("peak host GiB is the process's peak resident memory; 'before' is what it held (libraries) "
        "before loading")
  print(f"{'what':<38} {'seconds':>8} {'before GiB':>11} {'peak host GiB':>14} {'per device GiB':>15}")
  for name, r in rows:
    per_device = f"{r['per_device_gib']:.2f}" if "per_device_gib" in r else "-"
    print(f"{name:<38} {r['seconds']:>8.1f} {r['before_gib']:>11.2f} {r['peak_host_gib']:>14.2f} "
          f"{per_device:>15}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"checkpoint": args.hf_dir or args.model, "safetensors_gib": size / 2**30,
                 "results": {name: r for name, r in rows}}, f, indent=2)


if __name__ == "__main__":
  main()
