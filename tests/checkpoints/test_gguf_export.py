"""Tests for flan_jax/checkpoints/gguf_writer.py: GGUF export read back by flan_jax's GGUF import, and the export
binary.

The models are tiny random ones that `transformers` builds here (tests/tiny_pretrained.py); the file's
names and keys are checked against the constants of the `gguf` package, which llama.cpp's converter uses.
"""

import errno
import json
import os
import shutil

import gguf
import gin
import jax
import numpy as np
import pytest

from flan_jax import checkpoints, cli, errors
from flan_jax import export as export_binary
from flan_jax.checkpoints import gguf_reader as gguf_io
from flan_jax.checkpoints import gguf_writer as gguf_export
from flan_jax.model.transformer import Transformer
from tests import tiny_pretrained
from tests.checkpoints.test_gguf import SAMPLE, permute
from tests.checks import one_line, one_line_error, run_main
from tests.end_to_end.test_binaries import binary

pytest.importorskip("transformers")

Q = gguf.GGMLQuantizationType
ARCHS = ("llama", "qwen2", "tied", "llama3")
DTYPES = ("float32", "float16", "bfloat16", "q8_0")
# Largest |logit difference| from the original model allowed per type. Measured on these models (logits of
# size about 1): float16 2.2e-4 to 2.7e-4, bfloat16 2.2e-3 to 2.3e-3, q8_0 6.5e-3 to 7.4e-3.
BOUNDS = {"float16": 1e-3, "bfloat16": 5e-3, "q8_0": 1.5e-2}
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """arch -> Hugging Face directory of a tiny model."""
  out = {}
  for arch in ARCHS:
    out[arch] = str(tmp_path_factory.mktemp(f"hf_{arch}"))
    tiny_pretrained.build(arch, out[arch])
  return out


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
  """(arch, dtype) -> GGUF file exported from the tiny model (every type for llama and qwen2, f32 otherwise)."""
  out = {}
  for arch in ARCHS:
    for dtype in DTYPES if arch in ("llama", "qwen2") else ("float32",):
      directory = str(tmp_path_factory.mktemp(f"gguf_{arch}_{dtype}"))
      files = checkpoints.export_checkpoint(models[arch], directory, dtype=dtype, export_format="gguf")
      assert files == [os.path.join(directory, gguf_export.file_name(dtype))]
      assert os.listdir(directory) == [gguf_export.file_name(dtype)]  # nothing else, no temporary left
      out[arch, dtype] = files[0]
  return out


def _logits(path):
  opened = checkpoints.open_pretrained(path)
  params = checkpoints.load_params(opened)
  tokens = np.random.default_rng(0).integers(0, opened.config.vocab_size, (2, 11))
  return opened.config, params, np.asarray(Transformer(opened.config).apply({"params": params}, tokens))


@pytest.fixture(scope="module")
def originals(models):
  return {arch: _logits(directory) for arch, directory in models.items()}


# --- Weights and logits. -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_f32_reads_back_bit_identical(arch, exported, originals):
  config, params, logits = originals[arch]
  got_config, got_params, got_logits = _logits(exported[arch, "float32"])
  assert got_config == config
  for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(got_logits, logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "q8_0"])
def test_rounded_types_read_back_within_bounds(arch, dtype, exported, originals):
  config, _, logits = originals[arch]
  got_config, _, got_logits = _logits(exported[arch, dtype])
  assert got_config == config
  diff = np.abs(got_logits - logits).max()
  print(f"{arch} {dtype}: max |logit difference| {diff:.2e}, {os.path.getsize(exported[arch, dtype])} bytes")
  assert 0 < diff < BOUNDS[dtype]


def test_smaller_types_give_smaller_files(exported):
  sizes = {dtype: os.path.getsize(exported["llama", dtype]) for dtype in DTYPES}
  assert sizes["q8_0"] < sizes["float16"] == sizes["bfloat16"] < sizes["float32"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_stored_bytes_are_what_llama_cpp_converter_writes(arch, models, exported):
  """q/k rows permuted for llama only; matrices rounded (and Q8_0 quantized) exactly as the gguf package does."""
  opened = checkpoints.open_pretrained(models[arch])
  heads = {"q_proj": opened.config.num_heads, "k_proj": opened.config.num_kv_heads}
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA, 2)
  for dtype, qtype in (("float32", Q.F32), ("bfloat16", Q.BF16), ("q8_0", Q.Q8_0)):
    tensors = {t.name: t for t in gguf.GGUFReader(exported[arch, dtype]).tensors}
    for hf_name in opened.source.keys():
      value = opened.source.read(hf_name)
      proj = hf_name.split(".")[-2]
      if arch == "llama" and proj in heads:
        value = permute(value, heads[proj])
      tensor = tensors[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
      want_type = qtype if value.ndim == 2 else Q.F32
      assert tensor.tensor_type == want_type, hf_name
      want = value if want_type == Q.F32 else gguf.quants.quantize(value, want_type)
      assert np.asarray(tensor.data).tobytes() == np.ascontiguousarray(want).tobytes(), hf_name


# --- What llama.cpp reads: tensor names, shapes and metadata. -----------------------------------------------

def _allowed_names(arch: gguf.MODEL_ARCH, layers: int) -> set[str]:
  out = set()
  for tensor in gguf.MODEL_TENSORS[arch]:
    for i in range(layers):
      out |= {gguf.TENSOR_NAMES[tensor].format(bid=i) + suffix for suffix in (".weight", ".bias")}
  return out


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_names_are_the_architectures(arch, exported, originals):
  config = originals[arch][0]
  model_arch = gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA
  reader = gguf.GGUFReader(exported[arch, "float32"])
  tensors = {t.name: t for t in reader.tensors}
  assert set(tensors) <= _allowed_names(model_arch, config.num_layers)
  T, N = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
  required = {N[T.TOKEN_EMBD], N[T.OUTPUT_NORM]} | {
      N[t].format(bid=i) for i in range(config.num_layers)
      for t in (T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN)}
  if not config.tie_embeddings:
    required.add(N[T.OUTPUT])  # llama.cpp reuses token_embd when the file has no output.weight
  if arch == "llama3":
    required.add(N[T.ROPE_FREQS])
  want = {name + ".weight" for name in required}
  if arch == "qwen2":
    want |= {N[t].format(bid=i) + ".bias" for i in range(config.num_layers) for t in (T.ATTN_Q, T.ATTN_K, T.ATTN_V)}
  assert set(tensors) == want
  # ggml lists dimensions innermost first: token_embd is [d_model, vocab], attn_q [d_model, heads * head_dim].
  assert list(tensors["token_embd.weight"].shape) == [config.d_model, config.vocab_size]
  assert list(tensors["blk.0.attn_q.weight"].shape) == [config.d_model, config.num_heads * config.head_dim]
  assert list(tensors["blk.0.ffn_down.weight"].shape) == [config.d_ff, config.d_model]


def _field(reader, key):
  field = reader.get_field(key)
  return None if field is None else field.contents()


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_is_what_llama_cpp_reads(arch, exported, originals, models):
  config = originals[arch][0]
  name = "qwen2" if arch == "qwen2" else "llama"
  reader = gguf.GGUFReader(exported[arch, "float32"])
  K, L = gguf.Keys.General, gguf.Keys.LLM
  A, R, T = gguf.Keys.Attention, gguf.Keys.Rope, gguf.Keys.Tokenizer
  want = {
      K.ARCHITECTURE: name, K.NAME: os.path.basename(models[arch]), K.FILE_TYPE: gguf.LlamaFileType.ALL_F32,
      L.CONTEXT_LENGTH: config.max_position_embeddings, L.EMBEDDING_LENGTH: config.d_model,
      L.BLOCK_COUNT: config.num_layers, L.FEED_FORWARD_LENGTH: config.d_ff, L.VOCAB_SIZE: config.vocab_size,
      A.HEAD_COUNT: config.num_heads, A.HEAD_COUNT_KV: config.num_kv_heads, A.KEY_LENGTH: config.head_dim,
      A.VALUE_LENGTH: config.head_dim, R.DIMENSION_COUNT: config.head_dim,
      T.MODEL: "gpt2", T.PRE: "gpt-2", T.BOS_ID: 1, T.EOS_ID: 2, T.UNK_ID: 0, T.ADD_BOS: False,
  }
  for key, value in want.items():
    assert _field(reader, key.format(arch=name)) == value, key
  assert _field(reader, R.FREQ_BASE.format(arch=name)) == pytest.approx(config.rope_theta, rel=1e-7)
  assert _field(reader, A.LAYERNORM_RMS_EPS.format(arch=name)) == pytest.approx(config.norm_eps, rel=1e-7)
  tokens = _field(reader, T.LIST)
  assert len(tokens) == config.vocab_size == len(_field(reader, T.TOKEN_TYPE))
  assert tokens[:3] == [tiny_pretrained.UNK, tiny_pretrained.BOS, tiny_pretrained.EOS]
  assert _field(reader, T.TOKEN_TYPE)[:4] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
  assert len(_field(reader, T.MERGES)) > 0
  for dtype, file_type in (("float16", "MOSTLY_F16"), ("bfloat16", "MOSTLY_BF16"), ("q8_0", "MOSTLY_Q8_0")):
    if (arch, dtype) in exported:
      assert _field(gguf.GGUFReader(exported[arch, dtype]), K.FILE_TYPE) == gguf.LlamaFileType[file_type]


# --- Tokenizers. ---------------------------------------------------------------------------------------------

def test_bpe_tokenizer_reads_back_the_same(exported, tmp_path):
  from tokenizers import Tokenizer
  original = tiny_pretrained.train_tokenizer()
  rebuilt = Tokenizer.from_file(gguf_io.write_tokenizer(exported["llama", "q8_0"], str(tmp_path)))
  for text in SAMPLE:
    ids = original.encode(text).ids
    assert rebuilt.encode(text).ids == ids, text
    assert rebuilt.decode(ids, skip_special_tokens=False) == original.decode(ids, skip_special_tokens=False)


def _copy_model(source: str, target: str, tokenizer_config: dict | None = None, eos=None) -> str:
  shutil.copytree(source, target)
  if tokenizer_config is not None:
    with open(os.path.join(target, "tokenizer_config.json")) as f:
      config = json.load(f)
    with open(os.path.join(target, "tokenizer_config.json"), "w") as f:
      json.dump({**config, **tokenizer_config}, f)
  if eos is not None:
    with open(os.path.join(target, "config.json")) as f:
      config = json.load(f)
    with open(os.path.join(target, "config.json"), "w") as f:
      json.dump({**config, "eos_token_id": eos}, f)
  return target


def test_chat_template_bos_and_end_of_turn(models, tmp_path):
  """The chat template and add-BOS choice come back through the import; a second stop id becomes llama.cpp's
  end-of-turn token."""
  directory = _copy_model(models["tied"], str(tmp_path / "chat"), {"chat_template": TEMPLATE, "add_bos_token": True},
                          eos=[2, 5])
  out = checkpoints.export_checkpoint(directory, str(tmp_path / "out"), dtype="q8_0", export_format="gguf")[0]
  reader = gguf.GGUFReader(out)
  T = gguf.Keys.Tokenizer
  assert (_field(reader, T.CHAT_TEMPLATE), _field(reader, T.ADD_BOS)) == (TEMPLATE, True)
  assert (_field(reader, T.EOS_ID), _field(reader, T.EOT_ID)) == (2, 5)
  original, again = checkpoints.starting_vocabulary(directory), checkpoints.starting_vocabulary(out)
  assert again.chat_template == TEMPLATE and again.add_bos
  assert (again.bos_id, again.eos_id) == (original.bos_id, original.eos_id)
  text = " ".join(SAMPLE)
  assert again.encode(text) == original.encode(text)


def test_sentencepiece_tokenizer_reads_back_the_same(tmp_path):
  import sentencepiece as spm
  import torch
  import transformers
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(SAMPLE * 4), encoding="utf-8")
  # Llama's settings: identity normalization, a dummy prefix, whitespace kept, byte fallback.
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / "sp"), model_type="bpe", vocab_size=700,
      hard_vocab_limit=False, byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
      remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
      unk_id=0, bos_id=1, eos_id=2, minloglevel=2)
  original = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
  n, rows = original.GetPieceSize(), 720  # an embedding with more rows than the tokenizer has pieces
  directory = str(tmp_path / "spm")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=rows, head_dim=16, bos_token_id=1, eos_token_id=2,
                                    **tiny_pretrained.COMMON)
  transformers.LlamaForCausalLM(config).save_pretrained(directory)
  shutil.copyfile(tmp_path / "sp.model", os.path.join(directory, "tokenizer.model"))
  out = checkpoints.export_checkpoint(directory, str(tmp_path / "out"), dtype="float32", export_format="gguf")[0]
  reader = gguf.GGUFReader(out)
  T = gguf.Keys.Tokenizer
  assert (_field(reader, T.MODEL), _field(reader, T.ADD_BOS)) == ("llama", True)
  tokens, types = _field(reader, T.LIST), _field(reader, T.TOKEN_TYPE)
  assert len(tokens) == rows > n  # the unused rows are padding tokens
  assert tokens[n:] == [f"[PAD{i}]" for i in range(n, rows)] and set(types[n:]) == {gguf.TokenType.UNUSED}
  assert _field(reader, T.SCORES)[:n] == pytest.approx([original.GetScore(i) for i in range(n)])
  assert types[original.PieceToId("<0x41>")] == gguf.TokenType.BYTE
  rebuilt = spm.SentencePieceProcessor(model_file=gguf_io.write_tokenizer(out, str(tmp_path / "tok")))
  unseen = "Unseen: ∮ ⅋ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ byte fallback"
  for text in SAMPLE + [unseen]:
    assert rebuilt.encode(text) == original.encode(text), text
  assert any(original.IsByte(i) for i in original.encode(unseen))


# --- Bad input. ---------------------------------------------------------------------------------------------

def test_models_and_tokenizers_llama_cpp_cannot_take(models, tmp_path):
  import seqio
  mistral = str(tmp_path / "mistral")
  tiny_pretrained.build("mistral", mistral)
  one_line_error(lambda: checkpoints.export_checkpoint(mistral, str(tmp_path / "a"), export_format="gguf"),
                  "sliding-window")
  one_line_error(lambda: gguf_export.tokenizer_metadata(seqio.ByteVocabulary(), 384), "byte vocabulary")
  from tokenizers import pre_tokenizers
  odd = _copy_model(models["llama"], str(tmp_path / "odd"))
  tok = tiny_pretrained.train_tokenizer()
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(False)])
  tok.save(os.path.join(odd, "tokenizer.json"))
  one_line_error(lambda: checkpoints.export_checkpoint(odd, str(tmp_path / "b"), export_format="gguf"),
                  "pre-tokenizer")
  one_line_error(lambda: checkpoints.export_checkpoint(models["llama"], str(tmp_path / "c"), dtype="q4_0",
                                                       export_format="gguf"), "float32, q8_0")
  one_line_error(lambda: checkpoints.export_checkpoint(models["llama"], str(tmp_path / "c"), dtype="q8_0"),
                  "'huggingface'; use bfloat16")
  one_line_error(lambda: checkpoints.export_checkpoint(models["llama"], str(tmp_path / "c"), export_format="onnx"),
                  "'huggingface' or 'gguf'")
  assert not any(os.path.exists(tmp_path / d) for d in "abc")


def test_a_failed_write_leaves_no_file(models, tmp_path, monkeypatch):
  calls = []

  def fail_on_third(value, qtype):
    calls.append(1)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    return np.ascontiguousarray(value, np.float32)

  monkeypatch.setattr(gguf_export, "_encode", fail_on_third)
  out = tmp_path / "out"
  with pytest.raises(OSError, match="No space left") as e:
    checkpoints.export_checkpoint(models["llama"], str(out), dtype="float32", export_format="gguf")
  # The binaries name the file in their one line (gin re-raises a copy; the original is in the chain).
  assert str(out / "model-f32.gguf") in [getattr(x, "filename", None) for x in errors.chain(e.value)]
  assert os.listdir(out) == []


# --- Through the binary: OVERWRITE. ----------------------------------------------------------------------

def _snapshot(directory):
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


@pytest.mark.parametrize("export_format", ["huggingface", "gguf"])
def test_non_empty_output_dir_needs_overwrite(export_format, models, tmp_path, capfd):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  (out / "model-f32.gguf").write_text("an earlier export")
  (out / "config.json").write_text("{}")
  before = _snapshot(out)
  args = ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={models['llama']}", f"--gin.OUTPUT_DIR={out}",
          f"--gin.EXPORT_FORMAT='{export_format}'", "--gin.EXPORT_DTYPE='float32'"]
  code, err = run_main(export_binary, args, capfd)
  assert code == 2
  line = one_line(err)
  assert "is not empty" in line and "OVERWRITE=True" in line, err
  assert _snapshot(out) == before  # nothing written or overwritten
  gin.clear_config()
  try:
    cli.run(export_binary.main, args + ["--gin.OVERWRITE=True"])
  finally:
    gin.clear_config()
  after = _snapshot(out)
  assert after["notes.txt"] == b"mine"
  if export_format == "gguf":
    assert set(after) == set(before) and after["config.json"] == b"{}"
    assert after["model-f32.gguf"] != before["model-f32.gguf"]
    assert checkpoints.open_pretrained(str(out / "model-f32.gguf")).config == checkpoints.open_pretrained(
        models["llama"]).config
  else:
    assert json.loads(after["config.json"])["model_type"] == "llama"
    assert after["model-f32.gguf"] == before["model-f32.gguf"]  # not a file this export writes


def test_hf_overwrite_removes_the_earlier_exports_stale_weights(models, tmp_path):
  """Over a sharded export, a one-file export removes the old shards and index, which loaders would prefer."""
  out = str(tmp_path / "out")
  first = checkpoints.export_checkpoint(models["qwen2"], out, dtype="float32", max_shard_gb=60e3 / 2 ** 30)
  assert len(first) > 1
  with open(os.path.join(out, "notes.txt"), "w") as f:
    f.write("mine")
  again = checkpoints.export_checkpoint(models["qwen2"], out, dtype="float32", overwrite=True)
  assert again == ["model.safetensors"]
  assert sorted(os.listdir(out)) == sorted(["config.json", "generation_config.json", "model.safetensors",
                                            "notes.txt", "tokenizer.json", "tokenizer_config.json",
                                            "vocabulary.json"])


def test_export_binary_writes_gguf(models, tmp_path):
  """One real process of the binary, as a user runs it."""
  out = tmp_path / "out"
  result = binary("export", "--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={models['qwen2']}",
                  f"--gin.OUTPUT_DIR={out}", "--gin.EXPORT_FORMAT='gguf'", "--gin.EXPORT_DTYPE='q8_0'")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "model-q8_0.gguf (GGUF Q8_0" in result.stdout
  assert os.listdir(out) == ["model-q8_0.gguf"]
  assert checkpoints.open_pretrained(str(out / "model-q8_0.gguf")).config.qkv_bias
