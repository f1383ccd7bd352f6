"""Low-rank adapters (LoRA) on a frozen base, optionally held in int8 or 4-bit NF4 (QLoRA-style): the config, the
adapter and quantization arithmetic, the split of a parameter tree into adapters and base, and merging.

A target projection W [in..., out...] gains A [in..., rank] and B [rank, out...] (B starts at zero), and
computes x W + (alpha / rank) (dropout(x) A) B. The model (flan_jax/model/transformer.py) creates them; the train step
(flan_jax/training/step.py) differentiates the adapters alone. Run records, restore and export: flan_jax/checkpoints/
(run_record.py, restore.py, peft.py).
"""

import dataclasses
import math
import statistics
from typing import Any, Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from flan_jax import settings
from flan_jax.errors import UserError

# Target name -> the kernel it adapts (the names of flan_jax/model/transformer.py's Attention and MLP parameters).
TARGETS = {"q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w_gate", "up": "w_up", "down": "w_down"}
# Hugging Face / PEFT module name of each kernel, and its module's parent.
HF_MODULES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
              "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
              "w_down": "mlp.down_proj"}
QUANTIZATIONS = ("none", "int8", "nf4")
BASE_DTYPES = (None, "float32", "bfloat16", "float16")
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
SCALE_SUFFIX = "_scale"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which projections get adapters, their rank and scale, and how the frozen base is held."""
  rank: int = 8
  alpha: float = 16.0  # the update is scaled by alpha / rank
  dropout: float = 0.0  # on the adapter's input only
  targets: Sequence[str] = ("q", "k", "v", "o", "gate", "up", "down")
  # "int8": every projection of the frozen base held as int8 with one float32 scale per block of
  # `quant_block` values along its last axis, dequantized per layer in the step; "nf4": as 4-bit codes of
  # the NormalFloat levels (two to a byte) with the same per-block scales.
  base_quantization: str = "none"
  quant_block: int = 64
  # The dtype of the frozen base's float weights (every one but the quantization scales); None: the model's
  # ModelConfig.param_dtype. "bfloat16" halves a float base, and the embeddings and norms of a quantized one.
  base_dtype: Optional[str] = None

  def __post_init__(self):
    settings.integer("LoraConfig.rank", self.rank)
    settings.number("LoraConfig.alpha", self.alpha, low=0, low_open=True)
    settings.number("LoraConfig.dropout", self.dropout, low=0, high=1, high_open=True)
    settings.integer("LoraConfig.quant_block", self.quant_block)
    if isinstance(self.targets, str) or not self.targets:
      raise UserError(f"LoraConfig.targets={self.targets!r} must be a non-empty list of projections from "
                      f"{list(TARGETS)}; e.g. --gin.LoraConfig.targets=\"['q', 'v']\"")
    unknown = [t for t in self.targets if t not in TARGETS]
    if unknown:
      raise UserError(f"LoraConfig.targets names {unknown}, which the model does not have; choose from {list(TARGETS)}")
    if self.base_quantization not in QUANTIZATIONS:
      raise UserError(f"LoraConfig.base_quantization={self.base_quantization!r}; choose one of {list(QUANTIZATIONS)}")
    if self.base_dtype not in BASE_DTYPES:
      raise UserError(f"LoraConfig.base_dtype={self.base_dtype!r}; choose one of {list(BASE_DTYPES)} (None: the "
                      "model's param_dtype)")
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def quantized(self) -> bool:
    return self.base_quantization != "none"

  def adapts(self, kernel: str) -> bool:
    return kernel in {TARGETS[t] for t in self.targets}

  def record(self) -> dict:
    return {**dataclasses.asdict(self), "targets": list(self.targets)}


def kernel_shapes(config) -> dict[str, tuple[tuple[int, ...], int]]:
  """kernel name -> (its shape in one layer, how many leading dims it contracts), for a ModelConfig."""
  d, f, n, k, h = config.d_model, config.d_ff, config.num_heads, config.num_kv_heads, config.head_dim
  return {"wq": ((d, n, h), 1), "wk": ((d, k, h), 1), "wv": ((d, k, h), 1), "wo": ((n, h, d), 2),
          "w_gate": ((d, f), 1), "w_up": ((d, f), 1), "w_down": ((f, d), 1)}


def check(lora: LoraConfig, config) -> None:
  """A rank no larger than each target projection's input and output sizes; for nf4, even last axes."""
  for kernel, (shape, contract) in kernel_shapes(config).items():
    if lora.base_quantization == "nf4" and shape[-1] % 2:
      raise UserError(f"LoraConfig.base_quantization='nf4' packs two values to a byte along a projection's last "
                      f"axis, and {kernel}'s is {shape[-1]}, odd; use 'int8'")
    if not lora.adapts(kernel):
      continue
    fan_in, fan_out = math.prod(shape[:contract]), math.prod(shape[contract:])
    if lora.rank > min(fan_in, fan_out):
      raise UserError(f"LoraConfig.rank={lora.rank} is larger than the {kernel} projection ({fan_in} -> {fan_out}); "
                      f"choose a rank of at most {min(fan_in, fan_out)}")


# --- Quantization of the frozen base: a float32 scale per block of the last axis, and per value an int8 or
# a 4-bit NF4 code. -------------------------------------------------------------------------------------------


def _normal_float_levels(offset: float = 0.9677083) -> tuple[float, ...]:
  """The 16 NormalFloat4 levels of the QLoRA paper (Dettmers et al., 2023): quantiles of the standard normal,
  8 for the positive half and 7 for the negative half plus an exact zero, scaled so the extremes are +-1.
  `offset` is the outermost quantile's probability, the one the paper uses."""
  normal = statistics.NormalDist()
  evenly = lambda n: [offset + (0.5 - offset) * i / (n - 1) for i in range(n - 1)]  # n points, the last 0.5 left out
  levels = sorted([normal.inv_cdf(p) for p in evenly(9)] + [0.0] + [-normal.inv_cdf(p) for p in evenly(8)])
  return tuple(v / max(abs(x) for x in levels) for v in levels)


NF4_LEVELS = _normal_float_levels()


def block_size(lora: LoraConfig, last: int) -> int:
  """The quantization block along a last axis of length `last`: quant_block, or the largest divisor of it."""
  return math.gcd(lora.quant_block, last)


def quantize(w: jax.Array, block: int, kind: str = "int8") -> tuple[jax.Array, jax.Array]:
  """w [..., n] -> (codes, float32 scales [..., n // block]), symmetric with the absmax of each block.

  int8: codes are int8 values [..., n] of w / scale * 127. nf4: codes are the nearest NF4 level of w / absmax,
  4 bits each, two to a uint8 byte [..., n / 2] (value 2i in the low half of byte i, 2i + 1 in the high half).
  """
  blocks = w.astype(jnp.float32).reshape(w.shape[:-1] + (w.shape[-1] // block, block))
  absmax = jnp.max(jnp.abs(blocks), axis=-1)
  if kind == "int8":
    scale = absmax / 127.0
    q = jnp.round(blocks / jnp.where(scale == 0, 1.0, scale)[..., None])
    return jnp.clip(q, -127, 127).astype(jnp.int8).reshape(w.shape), scale
  unit = (blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]).reshape(w.shape)
  levels = jnp.asarray(NF4_LEVELS, jnp.float32)
  codes = jnp.searchsorted((levels[1:] + levels[:-1]) / 2, unit).astype(jnp.uint8)  # the nearest level
  pairs = codes.reshape(w.shape[:-1] + (w.shape[-1] // 2, 2))
  return pairs[..., 0] | (pairs[..., 1] << 4), absmax


def dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
  """The inverse of quantize (the kind read from the codes' dtype: int8, or uint8 for packed NF4), in `dtype`."""
  if q.dtype == jnp.uint8:
    codes = jnp.stack([q & 15, q >> 4], axis=-1).reshape(q.shape[:-1] + (2 * q.shape[-1],))
    values = jnp.asarray(NF4_LEVELS, jnp.float32)[codes]
  else:
    values = q.astype(jnp.float32)
  block = values.shape[-1] // scale.shape[-1]
  blocks = values.reshape(values.shape[:-1] + (scale.shape[-1], block)) * scale[..., None]
  return blocks.reshape(values.shape).astype(dtype)


def kernel_param(module: nn.Module, name: str, shape: tuple, axes: tuple, init, pdtype,
                 lora: Optional[LoraConfig]) -> jax.Array | tuple[jax.Array, jax.Array]:
  """A projection's kernel [shape]: a float parameter, or (codes, float32 scales) for a quantized base (int8
  codes of the same shape, or NF4 codes two to a uint8 byte along the last axis)."""
  if lora is None or not lora.quantized:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype)
  block = block_size(lora, shape[-1])
  if lora.base_quantization == "nf4":
    codes = shape[:-1] + (shape[-1] // 2,)
    q = module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), codes, jnp.uint8)
  else:
    q = module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, jnp.int8)
  scale = module.param(name + SCALE_SUFFIX, nn.with_logical_partitioning(nn.initializers.ones, axes[:-1] + (None,)),
                       shape[:-1] + (shape[-1] // block,), jnp.float32)
  return q, scale


def adapter_params(module: nn.Module, name: str, shape: tuple, axes: tuple, contract: int, lora: LoraConfig,
                   pdtype) -> tuple[jax.Array, jax.Array]:
  """(A [in..., rank], B [rank, out...]) of the kernel `name`: A uniform in +-1/sqrt(fan in), B zero."""
  bound = 1.0 / math.sqrt(math.prod(shape[:contract]))
  uniform = lambda key, s, dtype: jax.random.uniform(key, s, dtype, -bound, bound)
  a = module.param(name + "_lora_a", nn.with_logical_partitioning(uniform, axes[:contract] + ("lora_rank",)),
                   shape[:contract] + (lora.rank,), pdtype)
  zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank",) + axes[contract:])
  b = module.param(name + "_lora_b", zeros, (lora.rank,) + shape[contract:], pdtype)
  return a, b


# --- Parameter trees: adapters apart from the frozen base, and merged back into plain weights. ------------

def is_adapter(path: tuple) -> bool:
  return str(path[-1]).endswith(ADAPTER_SUFFIXES)


def split(tree: Any) -> tuple[dict, dict]:
  """(adapters, frozen base) of a parameter tree (or of a tree of shapes or shardings like it)."""
  flat = traverse_util.flatten_dict(tree)
  adapters = {p: v for p, v in flat.items() if is_adapter(p)}
  frozen = {p: v for p, v in flat.items() if not is_adapter(p)}
  return traverse_util.unflatten_dict(adapters), traverse_util.unflatten_dict(frozen)


def join(frozen: Any, adapters: Any) -> dict:
  """The model's whole parameter tree from its frozen base and its adapters."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen), **traverse_util.flatten_dict(adapters)})


def _kernel_name(path: tuple) -> Optional[str]:
  name = str(path[-1])
  return name if name in HF_MODULES and len(path) >= 2 and path[-2] in ("attn", "mlp") else None


def in_base_dtype(frozen: Any, lora: LoraConfig) -> Any:
  """The frozen tree (of arrays or of ShapeDtypeStructs) with its float weights in lora.base_dtype, if set; the
  quantization scales stay float32."""
  if lora.base_dtype is None:
    return frozen
  dtype = jnp.dtype(lora.base_dtype)

  def cast(path, x):
    if str(path[-1]).endswith(SCALE_SUFFIX) or not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return jax.ShapeDtypeStruct(x.shape, dtype) if isinstance(x, jax.ShapeDtypeStruct) else x.astype(dtype)

  return traverse_util.unflatten_dict({p: cast(p, x) for p, x in traverse_util.flatten_dict(frozen).items()})


def freeze(base: Any, lora: LoraConfig) -> dict:
  """A float base parameter tree (flan_jax's plain model) -> the frozen tree of the adapted model: the same
  (in lora.base_dtype, if set), or with every projection kernel quantized."""
  out = {}
  for path, w in traverse_util.flatten_dict(base).items():
    if not lora.quantized or _kernel_name(path) is None:
      out[path] = w
      continue
    q, scale = quantize(w, block_size(lora, w.shape[-1]), lora.base_quantization)
    out[path], out[path[:-1] + (path[-1] + SCALE_SUFFIX,)] = q, scale
  return in_base_dtype(traverse_util.unflatten_dict(out), lora)


def delta(a: jax.Array, b: jax.Array, lora: LoraConfig) -> jax.Array:
  """The adapter's update of its kernel: scale * A B, [layers, in..., out...] from stacked A and B."""
  layers, rank = a.shape[0], a.shape[-1]
  product = jnp.einsum("lir,lro->lio", a.reshape(layers, -1, rank).astype(jnp.float32),
                       b.reshape(layers, rank, -1).astype(jnp.float32))
  return (lora.scale * product).reshape(a.shape[:-1] + b.shape[2:])


def merge(frozen: Any, adapters: Any, lora: LoraConfig) -> dict:
  """The plain model's parameters (flan_jax's Transformer without adapters): every kernel dequantized,
  plus its adapter's update, in the kernel's parameter dtype (float32 for a quantized base, and for an adapted
  kernel of a base held in lora.base_dtype)."""
  flat = traverse_util.flatten_dict(frozen)
  pieces = traverse_util.flatten_dict(adapters)
  out = {}
  for path, w in flat.items():
    if str(path[-1]).endswith(SCALE_SUFFIX):
      continue
    if _kernel_name(path) is not None and w.dtype in (jnp.int8, jnp.uint8):
      w = dequantize(w, flat[path[:-1] + (path[-1] + SCALE_SUFFIX,)])
    a = pieces.get(path[:-1] + (path[-1] + "_lora_a",))
    if a is not None:
      merged = w.astype(jnp.float32) + delta(a, pieces[path[:-1] + (path[-1] + "_lora_b",)], lora)
      w = merged if lora.base_dtype else merged.astype(w.dtype)  # not rounded to a narrower base_dtype
    out[path] = w
  return traverse_util.unflatten_dict(out)


def count(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def adapter_count(config, lora: LoraConfig) -> int:
  """Parameters of the adapters LoRA adds to a ModelConfig: rank x (fan in + fan out) per target and layer."""
  total = 0
  for kernel, (shape, contract) in kernel_shapes(config).items():
    if lora.adapts(kernel):
      total += lora.rank * (math.prod(shape[:contract]) + math.prod(shape[contract:]))
  return config.num_layers * total


def train_state_bytes(config, lora: Optional[LoraConfig] = None) -> dict[str, int]:
  """The bytes a run holds besides activations, from the config's shapes alone (AdamW: two moments per trained
  parameter, in the parameters' dtype). Keys: base (frozen weights; 0 for full fine-tuning), params (trained),
  grads, opt_state, total. Divide by fsdp x tensor for one device's share under an even split."""
  width = jnp.dtype(config.param_dtype).itemsize
  if lora is None:
    trained, base = config.num_params(), 0
  else:
    base_width = jnp.dtype(lora.base_dtype or config.param_dtype).itemsize
    trained, base = adapter_count(config, lora), config.num_params() * base_width
    if lora.quantized:  # a projection's values in 1 (int8) or 1/2 (nf4) bytes, a float32 scale per block
      code_bytes = 1 if lora.base_quantization == "int8" else 0.5
      for shape, _ in kernel_shapes(config).values():
        size = math.prod(shape)
        base += config.num_layers * int(size * (code_bytes - base_width) + 4 * size // block_size(lora, shape[-1]))
  params = trained * width
  return {"base": base, "params": params, "grads": params, "opt_state": 2 * params,
          "total": base + 4 * params}
