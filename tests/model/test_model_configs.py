"""The gin/models files of public checkpoints: published sizes, and agreement with an import.

Each file is parsed with gin and compared with the checkpoint's published config.json (written out
below), read through transformers' config classes and checkpoints.config_fields, the path an import
takes. CPU only, no compilation.
"""

import dataclasses
import os
import re

import gin
import pytest
import transformers

from flan_jax import checkpoints
from flan_jax.model.transformer import ModelConfig
from tests import conftest

GIN_DIR = os.path.join(conftest.ROOT, "gin")

LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
LLAMA31_ROPE = dict(LLAMA32_ROPE, factor=8.0)

# file -> (checkpoint, published parameter count, transformers config class, its config.json fields).
MODELS = {
    "smollm2_135m": ("HuggingFaceTB/SmolLM2-135M", 134_515_008, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, rope_scaling=None,
        tie_word_embeddings=True)),
    "smollm2_360m": ("HuggingFaceTB/SmolLM2-360M", 361_821_120, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=960, intermediate_size=2560,
        num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, rope_scaling=None,
        tie_word_embeddings=True)),
    "llama3_2_1b": ("meta-llama/Llama-3.2-1B", 1_235_814_400, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA32_ROPE,
        tie_word_embeddings=True)),
    "llama3_2_3b": ("meta-llama/Llama-3.2-3B", 3_212_749_824, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA32_ROPE,
        tie_word_embeddings=True)),
    "llama3_1_8b": ("meta-llama/Llama-3.1-8B", 8_030_261_248, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
        tie_word_embeddings=False)),
    "llama3_1_70b": ("meta-llama/Llama-3.1-70B", 70_553_706_496, transformers.LlamaConfig, dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=8192, intermediate_size=28672,
        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
        tie_word_embeddings=False)),
    "mistral_7b": ("mistralai/Mistral-7B-v0.3", 7_248_023_552, transformers.MistralConfig, dict(
        architectures=["MistralForCausalLM"], vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False)),
    "qwen2_5_0_5b": ("Qwen/Qwen2.5-0.5B", 494_032_768, transformers.Qwen2Config, dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, sliding_window=32768,
        max_window_layers=24, tie_word_embeddings=True)),
    "qwen2_5_1_5b": ("Qwen/Qwen2.5-1.5B", 1_543_714_304, transformers.Qwen2Config, dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, sliding_window=131072,
        max_window_layers=28, tie_word_embeddings=True)),
    "qwen2_5_7b": ("Qwen/Qwen2.5-7B", 7_615_616_512, transformers.Qwen2Config, dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, sliding_window=131072,
        max_window_layers=28, tie_word_embeddings=False)),
}

# Approximate counts as published on the model cards / by the model authors.
PUBLISHED = {"smollm2_135m": 134.5e6, "smollm2_360m": 361.8e6, "llama3_2_1b": 1.236e9, "llama3_2_3b": 3.213e9,
             "llama3_1_8b": 8.030e9, "mistral_7b": 7.248e9, "qwen2_5_0_5b": 494.0e6, "qwen2_5_1_5b": 1.544e9,
             "qwen2_5_7b": 7.616e9, "llama3_1_70b": 70.554e9}

MESHES = {"gpu1": (1, 1, 1), "gpu8": (1, 8, 1), "gpu8_tensor": (1, 4, 2)}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  gin.add_config_file_search_path(GIN_DIR)
  yield
  gin.clear_config()


def gin_model(name: str) -> ModelConfig:
  gin.clear_config()
  gin.parse_config_file(os.path.join(GIN_DIR, "models", f"{name}.gin"))
  config = ModelConfig()
  gin.clear_config()  # so ModelConfigs built later see no bindings
  return config


def imported(name: str) -> ModelConfig:
  """What importing the checkpoint would build: its config.json, through transformers and config_fields."""
  _, _, config_class, fields = MODELS[name]
  hf = config_class(**fields).to_dict()
  return ModelConfig(**checkpoints.config_fields(hf, f"{name} config.json"))


def shape_fields(config: ModelConfig) -> dict:
  return {f: getattr(config, f) for f in checkpoints.SHAPE_FIELDS}


def test_every_model_file_is_covered():
  files = {f[:-4] for f in os.listdir(os.path.join(GIN_DIR, "models")) if f.endswith(".gin")}
  assert set(MODELS) <= files
  assert set(MODELS) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count(name):
  config = gin_model(name)
  assert config.num_params() == MODELS[name][1]
  assert abs(config.num_params() - PUBLISHED[name]) / PUBLISHED[name] < 0.005


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_the_checkpoint_import(name):
  config = gin_model(name)
  theirs = imported(name)
  assert shape_fields(config) == shape_fields(theirs)
  checkpoints.check_config(config, theirs, name)  # the check a run with this gin file makes


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_settings(name):
  config = gin_model(name)
  assert config.prefix_lm is False
  assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")
  assert config.qkv_bias == name.startswith("qwen")
  assert config.sliding_window is None
  if name.startswith("llama3"):
    assert config.rope_scaling == "llama3"
    assert config.rope_scaling_factor == (32.0 if name.startswith("llama3_2") else 8.0)
    assert (config.rope_low_freq_factor, config.rope_high_freq_factor) == (1.0, 4.0)
    assert config.rope_original_max_position == 8192
  else:
    assert config.rope_scaling == "none"
  if config.num_params() > 5e9:
    assert config.remat_policy in ("dots_no_batch", "full")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_named_in_header(name):
  with open(os.path.join(GIN_DIR, "models", f"{name}.gin")) as f:
    first = f.readline()
  assert first.startswith(f"# {MODELS[name][0]}:")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recommended_meshes_exist_and_divide(name):
  """Each mesh a model file recommends exists and splits the model's sharded dimensions evenly."""
  with open(os.path.join(GIN_DIR, "models", f"{name}.gin")) as f:
    text = f.read()
  meshes = sorted(set(re.findall(r"mesh/(\w+)\.gin", text)))
  assert "gpu8" in meshes or "gpu8_tensor" in meshes
  assert any(m.startswith("tpu_") for m in meshes)
  config = gin_model(name)
  for mesh in meshes:
    gin.clear_config()
    gin.parse_config_file(os.path.join(GIN_DIR, "mesh", f"{mesh}.gin"))
    fsdp, tensor = gin.query_parameter("make_mesh.fsdp"), gin.query_parameter("make_mesh.tensor")
    assert config.d_model % fsdp == 0, (mesh, "embed")
    for field in ("num_heads", "num_kv_heads", "d_ff", "vocab_size"):
      assert getattr(config, field) % tensor == 0, (mesh, field)


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_gpu_meshes(mesh):
  gin.parse_config_file(os.path.join(GIN_DIR, "mesh", f"{mesh}.gin"))
  got = tuple(gin.query_parameter(f"make_mesh.{axis}") for axis in ("data", "fsdp", "tensor"))
  assert got == MESHES[mesh]


def test_llama_1b_is_an_alias():
  assert dataclasses.asdict(gin_model("llama_1b")) == dataclasses.asdict(gin_model("llama3_2_1b"))
