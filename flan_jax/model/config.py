"""ModelConfig: what a model is (its shapes, rotary settings, dtypes, attention kernel and layer
loop), checked where it is declared, so a bad value is one line naming the field.

JAX only; imports nothing from flan_jax but settings, errors and the attention kernels' names.
"""

import dataclasses
from typing import Optional

import gin
import jax

from flan_jax import settings
from flan_jax.errors import UserError
from flan_jax.model import attention as attention_lib

REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


ROPE_SCALINGS = ("none", "linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 384
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 384
  rope_theta: float = 10_000.0
  # Rotary frequency scaling: "none", "linear" (positions / factor) or "llama3" (Llama 3.1's
  # wavelength-dependent scaling, which also uses the three fields after `rope_scaling_factor`).
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  max_position_embeddings: int = 8192  # recorded for export; not enforced
  qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
  sliding_window: Optional[int] = None  # a token sees at most this many tokens, itself included (Mistral)
  prefix_lm: bool = True  # inputs attend to each other both ways; False for causally pretrained models
  norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
  param_dtype: str = "float32"  # master weights
  remat_policy: str = "none"  # one of REMAT_POLICIES
  # The layers run as one scan over their stacked parameters (the compiled program does not grow with
  # depth), or as an unrolled loop over the same parameters: longer compiles, faster steps on CPU,
  # where XLA fuses each layer's backward on its own instead of through the scan's stacked residuals.
  # The parameters, checkpoints and results are the same either way.
  scan_layers: bool = True
  # Attention kernel for training and scoring: "einsum" (the reference), "xla" or "cudnn"
  # (jax.nn.dot_product_attention), "blocked" (flash-style, O(length * block) memory) or "splash"
  # (the Pallas TPU kernel; no prefix LM); see flan_jax/model/attention.py and docs/models.md. Decoding
  # with the KV cache always uses einsum.
  attention: str = "einsum"
  attention_block_size: int = 512  # query and key block length of "blocked" and "splash" (capped at the length)
  attention_interpret: bool = False  # run Pallas kernels ("splash") in interpret mode, for tests on CPU

  def __post_init__(self):
    self._check_types()
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of ModelConfig.num_kv_heads="
                      f"{self.num_kv_heads}; choose heads that divide evenly")
    if self.head_dim % 2:
      raise UserError(f"ModelConfig.head_dim={self.head_dim} must be even for rotary embeddings")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise UserError(f"ModelConfig.rope_scaling={self.rope_scaling!r}; choose one of {list(ROPE_SCALINGS)}")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"ModelConfig.remat_policy={self.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise UserError(f"ModelConfig.attention={self.attention!r}; choose one of {list(attention_lib.IMPLEMENTATIONS)}")
    if self.attention == "splash" and self.prefix_lm:
      raise UserError("ModelConfig.attention='splash' cannot do prefix LM (its mask is fixed at compile time, not per "
                      "example); set ModelConfig.prefix_lm = False (for causally pretrained models) or use "
                      "attention='blocked'")

  def _check_types(self) -> None:
    """Each field's type and range (gin passes whatever it is given), as one line naming the field."""
    block = self.attention_block_size
    if not (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
      kind = "" if isinstance(block, int) and not isinstance(block, bool) else f" (a {type(block).__name__})"
      raise UserError(f"ModelConfig.attention_block_size={block!r}{kind} must be positive (an integer block "
                      "length); pass --gin.ModelConfig.attention_block_size=<n>")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff",
                 "rope_original_max_position", "max_position_embeddings"):
      settings.integer(f"ModelConfig.{name}", getattr(self, name))
    settings.integer("ModelConfig.sliding_window", self.sliding_window, allow_none=True)
    for name in ("rope_theta", "rope_scaling_factor", "norm_eps"):
      settings.number(f"ModelConfig.{name}", getattr(self, name), low=0, low_open=True)
    for name in ("rope_low_freq_factor", "rope_high_freq_factor"):
      settings.number(f"ModelConfig.{name}", getattr(self, name), low=0)
    settings.number("ModelConfig.dropout_rate", self.dropout_rate, low=0, high=1, high_open=True)
    for name in ("qkv_bias", "prefix_lm", "tie_embeddings", "scan_layers", "attention_interpret"):
      settings.boolean(f"ModelConfig.{name}", getattr(self, name))
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise UserError(f"ModelConfig.{name}={getattr(self, name)!r}; choose one of {list(DTYPES)}")

  def num_params(self) -> int:
    d, f, h = self.d_model, self.d_ff, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    block = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.num_layers * block + d + head
