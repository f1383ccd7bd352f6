"""The memory a run needs per model, computed from the shapes in gin/models: README's table.

    python scripts/memory_table.py [--lora_rank=16] [--output=memory_table.json]

For each model file: full fine-tuning (AdamW: float32 weights, gradients and two moments), LoRA on a float32
base, and LoRA on an int8 base (flan_jax.lora.train_state_bytes; adapters on all seven projections). The
figures are the weights, gradients and optimizer state of the whole model: one device holds its share of
them on an fsdp mesh (total / fsdp), and activations come on top (they grow with batch x length and shrink
with ModelConfig.remat_policy). scripts/benchmark_train.py --lora_rank measures them beside the computed
bytes. Prints a Markdown table and writes it as JSON. Needs JAX and gin, not TensorFlow or seqio.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402

from flan_jax import cli  # noqa: E402
from flan_jax import lora as lora_lib  # noqa: E402
from flan_jax.model import ModelConfig  # noqa: E402

# Public checkpoints' shapes, smallest first (gin/models/).
MODELS = ("smollm2_135m", "smollm2_360m", "qwen2_5_0_5b", "llama3_2_1b", "qwen2_5_1_5b", "llama3_2_3b",
          "mistral_7b", "qwen2_5_7b", "llama3_1_8b", "llama3_1_70b")


def model_config(name: str) -> ModelConfig:
  gin.clear_config()
  cli.configure_gin(cli.parse_flags([f"--gin_file=models/{name}.gin"]))
  try:
    return ModelConfig()
  finally:
    gin.clear_config()


def rows(lora_rank: int) -> list[dict]:
  out = []
  for name in MODELS:
    cfg = model_config(name)
    full = lora_lib.train_state_bytes(cfg)
    lora = lora_lib.train_state_bytes(cfg, lora_lib.LoraConfig(rank=lora_rank))
    int8 = lora_lib.train_state_bytes(cfg, lora_lib.LoraConfig(rank=lora_rank, base_quantization="int8"))
    out.append({"model": name, "params": cfg.num_params(),
                "adapter_params": lora_lib.adapter_count(cfg, lora_lib.LoraConfig(rank=lora_rank)),
                "full_bytes": full["total"], "lora_bytes": lora["total"], "lora_int8_bytes": int8["total"]})
  return out


def markdown(table: list[dict], lora_rank: int) -> str:
  gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
  lines = [f"| Model (`gin/models/`) | Parameters | Full fine-tuning | LoRA r={lora_rank} (adapters) | "
           f"LoRA r={lora_rank}, int8 base |", "|---|---:|---:|---:|---:|"]
  for r in table:
    lines.append(f"| `{r['model']}.gin` | {r['params'] / 1e9:.3g}B | {gib(r['full_bytes'])} | "
                 f"{gib(r['lora_bytes'])} ({r['adapter_params'] / 1e6:.1f}M) | {gib(r['lora_int8_bytes'])} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lora_rank", type=int, default=16)
  parser.add_argument("--output", default="memory_table.json")
  args = parser.parse_args(argv)
  table = rows(args.lora_rank)
  print(markdown(table, args.lora_rank))
  with open(args.output, "w") as f:
    json.dump({"lora_rank": args.lora_rank, "rows": table}, f, indent=2)
  print(f"wrote {args.output}")
  return table


if __name__ == "__main__":
  main()
