"""The model: a Llama-family decoder in Flax and everything that runs it on a device mesh.

- config.py: ModelConfig (shapes, rotary, dtypes, attention kernel, layer loop), checked where declared.
- transformer.py: the layers (RMSNorm, rotary, GQA attention with its KV cache, SwiGLU) and Transformer.
- attention.py: the attention kernels (einsum, xla, cudnn, blocked, splash) and `attend`, which picks one.
- lora.py: LoRA adapters on a frozen (optionally int8 / NF4) base, their merge and memory accounting.
- partitioning.py: the mesh, the logical-axis rules and the parameters' shardings.
- decoding.py: KV-cache decoding (greedy, sampling, beam search) and target scoring.

Imports: JAX, Flax and the leaves (flan_jax.errors, flan_jax.settings). Never TensorFlow, seqio or
any other flan_jax folder: the model and the train step run where no input pipeline exists.
"""

from flan_jax.model import attention, decoding, lora, partitioning
from flan_jax.model.config import ModelConfig
from flan_jax.model.lora import LoraConfig
from flan_jax.model.partitioning import axis_rules, make_mesh
from flan_jax.model.transformer import Cache, Transformer, apply_to_features, init_cache

__all__ = [
    "Cache", "LoraConfig", "ModelConfig", "Transformer", "apply_to_features", "attention", "axis_rules",
    "decoding", "init_cache", "lora", "make_mesh", "partitioning",
]
