"""The memory a run needs per model, computed from the shapes in gin/models: README's table.

    python scripts/memory_table.py [--lora_rank=16] [--output=memory_table.json]

For each model file: full fine-tuning (AdamW: float32 weights, gradients and two moments), and LoRA (adapters on
all seven projections, float32 with their moments) on a float32 base, a bfloat16 base, and an int8 or NF4 base
whose other weights are bfloat16 (flan_jax.model.lora.train_state_bytes). The figures are the weights, gradients and
optimizer state of the whole model: one device holds about total / (fsdp x tensor) of them on a sharded mesh,
and activations come on top (they grow with batch x length and shrink with ModelConfig.remat_policy).
scripts/benchmark_train.py --lora_rank measures them beside the computed bytes. Prints a Markdown table and
writes it as JSON. Needs JAX and gin, not TensorFlow or seqio.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402

from flan_jax import cli  # noqa: E402
from flan_jax.model import lora as lora_lib  # noqa: E402
from flan_jax.model.transformer import ModelConfig  # noqa: E402

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


# (column, LoraConfig settings besides the rank; None: full fine-tuning)
COLUMNS = (("Full fine-tuning", None), ("LoRA, f32 base", {}), ("LoRA, bf16 base", {"base_dtype": "bfloat16"}),
           ("LoRA, int8 + bf16 base", {"base_quantization": "int8", "base_dtype": "bfloat16"}),
           ("LoRA, NF4 + bf16 base", {"base_quantization": "nf4", "base_dtype": "bfloat16"}))


def rows(lora_rank: int) -> list[dict]:
  out = []
  for name in MODELS:
    cfg = model_config(name)
    loras = [None if kw is None else lora_lib.LoraConfig(rank=lora_rank, **kw) for _, kw in COLUMNS]
    out.append({"model": name, "params": cfg.num_params(), "adapter_params": lora_lib.adapter_count(cfg, loras[1]),
                "bytes": {column: lora_lib.train_state_bytes(cfg, lora)["total"]
                          for (column, _), lora in zip(COLUMNS, loras)}})
  return out


def markdown(table: list[dict], lora_rank: int) -> str:
  gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
  lines = [f"| Model (`gin/models/`) | Parameters | LoRA r={lora_rank} adapters | " +
           " | ".join(column for column, _ in COLUMNS) + " |", "|---|---:|---:|" + "---:|" * len(COLUMNS)]
  for r in table:
    lines.append(f"| `{r['model']}.gin` | {r['params'] / 1e9:.3g}B | {r['adapter_params'] / 1e6:.1f}M | " +
                 " | ".join(gib(b) for b in r["bytes"].values()) + " |")
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
