"""Tests for flan_jax/checkpoints/gguf_reader.py against GGUF files written here from tiny Hugging Face models."""

import copy
import json
import math
import os

import gguf
import jax
import numpy as np
import pytest
import torch

from flan_jax.checkpoints import gguf_reader as gguf_io
from tests import tiny_pretrained
from tests.checks import assert_trees_equal, one_line_error

Q = gguf.GGMLQuantizationType
TT = gguf.TokenType

# Multilingual, whitespace-heavy text on top of the fixture's: runs of spaces, tabs, newlines,
# CRLF, digits, emoji, scripts the BPE has barely seen, and the special tokens written inline.
SAMPLE = tiny_pretrained.TEXT + [
    "   three leading spaces, two trailing  ",
    "tabs\t\tnewlines\n\n\nand CRLF\r\nendings\r\n",
    "Ελληνικά, עברית, العربية, हिन्दी, 한국어, ภาษาไทย and 中文字符 mixed in",
    "emoji 🙂🚀👩‍💻 and combining e\u0301 vs é, full-width ＡＢＣ１２３",
    "digits 1234567890, 3.14159, -42, 1e-5 and 0x1F",
    "<s>special tokens</s> inline <unk> with it's, we'll, DON'T",
    " ",
    "\n",
    "",
]


# --- GGUF writing: test scaffolding that mirrors llama.cpp's convert_hf_to_gguf.py. ------------

def permute(weights: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's permutation of q/k rows: each head's two rotary halves become interleaved pairs."""
  return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
          .swapaxes(1, 2).reshape(weights.shape))


def llama3_rope_freqs(config) -> np.ndarray:
  """The converter's rope_freqs.weight for Llama 3 rotary scaling (computed as it does, in torch)."""
  rope = config.rope_parameters
  dim = config.head_dim
  freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
  factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
  old = rope["original_max_position_embeddings"]
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < old / high:
      out.append(1)
    elif wavelen > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return torch.tensor(out, dtype=torch.float32).numpy()


def bpe_vocab(tok, pre="gpt-2", add_bos=None):
  """Writer callback adding a byte-level BPE tokenizers.Tokenizer as llama.cpp's 'gpt2' vocab."""
  data = json.loads(tok.to_str())
  vocab = tok.get_vocab(with_added_tokens=True)
  tokens = [""] * len(vocab)
  for token, i in vocab.items():
    tokens[i] = token
  special = {t["id"] for t in data["added_tokens"] if t["special"]}
  merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]

  def add(writer):
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([TT.CONTROL if i in special else TT.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.token_to_id(tiny_pretrained.BOS))
    writer.add_eos_token_id(tok.token_to_id(tiny_pretrained.EOS))
    writer.add_unk_token_id(tok.token_to_id(tiny_pretrained.UNK))
    if add_bos is not None:
      writer.add_add_bos_token(add_bos)
  return add


def sentencepiece_vocab(sp):
  """Writer callback adding a SentencePieceProcessor as llama.cpp's 'llama' vocab."""
  def kind(i):
    for check, value in ((sp.IsUnknown, TT.UNKNOWN), (sp.IsControl, TT.CONTROL),
                         (sp.IsUnused, TT.UNUSED), (sp.IsByte, TT.BYTE)):
      if check(i):
        return value
    return TT.NORMAL

  def add(writer):
    n = sp.GetPieceSize()
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.IdToPiece(i) for i in range(n)])
    writer.add_token_scores([sp.GetScore(i) for i in range(n)])
    writer.add_token_types([kind(i) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
  return add


def write_gguf(path, model, vocab, qtype=Q.F32, arch=None, rope_freqs=None):
  """Writes `model` (a transformers Llama/Qwen2) as llama.cpp's converter would, in `qtype`."""
  config = model.config
  arch = arch or ("qwen2" if config.model_type == "qwen2" else "llama")
  heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
  head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
  w = gguf.GGUFWriter(path, arch)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_block_count(config.num_hidden_layers)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(heads)
  w.add_head_count_kv(kv_heads)
  w.add_key_length(head_dim)
  w.add_value_length(head_dim)
  w.add_rope_dimension_count(head_dim)
  w.add_rope_freq_base(config.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(config.rms_norm_eps)
  w.add_vocab_size(config.vocab_size)
  vocab(w)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                   config.num_hidden_layers)
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and config.tie_word_embeddings:
      continue
    data = tensor.float().numpy()
    if arch == "llama" and ".q_proj." in name:
      data = permute(data, heads)
    elif arch == "llama" and ".k_proj." in name:
      data = permute(data, kv_heads)
    add_tensor(w, names.get_name(name, try_suffixes=(".weight", ".bias")), data, qtype)
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def add_tensor(writer, name, data, qtype):
  """Vectors stay float32 (as llama.cpp keeps them); matrices are stored as `qtype`."""
  if data.ndim == 1 or qtype == Q.F32:
    writer.add_tensor(name, data.astype(np.float32))
  elif qtype == Q.F16:
    writer.add_tensor(name, data.astype(np.float16))
  else:
    try:
      blocks = gguf.quants.quantize(data, qtype)
    except NotImplementedError:  # a type the package cannot handle: zero blocks, for bad-input tests
      blocks = np.zeros(gguf.quants.quant_shape_to_byte_shape(data.shape, qtype), np.uint8)
    writer.add_tensor(name, blocks, raw_dtype=qtype)


# --- Fixtures. ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """arch -> (HF directory, transformers model) for the tiny models these tests convert."""
  out = {}
  for arch in ("llama", "qwen2", "tied", "llama3"):
    directory = str(tmp_path_factory.mktemp(f"hf_{arch}"))
    out[arch] = directory, tiny_pretrained.build(arch, directory)
  return out


@pytest.fixture(scope="module")
def ggufs(models, tmp_path_factory):
  """(arch, qtype name) -> GGUF path."""
  directory = tmp_path_factory.mktemp("gguf")
  tok = tiny_pretrained.train_tokenizer()
  out = {}
  for arch, (_, model) in models.items():
    freqs = llama3_rope_freqs(model.config) if arch == "llama3" else None
    for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0):
      path = str(directory / f"{arch}-{qtype.name}.gguf")
      out[arch, qtype.name] = write_gguf(path, model, bpe_vocab(tok), qtype, rope_freqs=freqs)
  return out


def hf_tensors(model) -> dict[str, np.ndarray]:
  state = {k: v.float().numpy() for k, v in model.state_dict().items()}
  if model.config.tie_word_embeddings:
    del state["lm_head.weight"]
  return state


# --- Tensors. ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "tied", "llama3"])
def test_f32_tensors_equal_hf_exactly(arch, models, ggufs):
  want = hf_tensors(models[arch][1])
  _, source = gguf_io.open_gguf(ggufs[arch, "F32"])
  assert sorted(source.keys()) == sorted(want)
  for name, value in want.items():
    assert source.shape(name) == value.shape, name
    got = source.read(name)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, value, err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_tensors_within_f16_rounding(arch, models, ggufs):
  _, source = gguf_io.open_gguf(ggufs[arch, "F16"])
  for name, value in hf_tensors(models[arch][1]).items():
    got = source.read(name)
    # Matrices are rounded to the nearest float16 (relative error <= 2**-11, or half the spacing
    # of float16's subnormals, 2**-25); vectors stay float32.
    np.testing.assert_allclose(got, value, rtol=2.0 ** -11, atol=2.0 ** -25, err_msg=name)
    rounded = value.astype(np.float16).astype(np.float32) if value.ndim == 2 else value
    np.testing.assert_array_equal(got, rounded, err_msg=name)


def test_bf16_tensors_equal_bfloat16_rounding(models, ggufs):
  _, source = gguf_io.open_gguf(ggufs["llama", "BF16"])
  for name, tensor in models["llama"][1].state_dict().items():
    want = tensor.to(torch.bfloat16).float() if tensor.ndim == 2 else tensor
    np.testing.assert_array_equal(source.read(name), want.numpy(), err_msg=name)


@pytest.mark.parametrize("arch,qtype,bound", [
    ("llama", "Q8_0", 1 / 127), ("qwen2", "Q8_0", 1 / 127), ("llama", "Q4_0", 1 / 8)])
def test_quantized_tensors_within_block_tolerance(arch, qtype, bound, models, ggufs):
  """Every value is within `bound` times the largest magnitude of its 32-value block.

  Q8_0 stores int8 codes times a float16 scale of block max / 127: rounding is off by at most
  half a step, and rounding the scale to float16 adds at most 127 * 2**-11 of a step. Q4_0 stores
  codes -8..7 times a scale of block max / 8, so the value opposite the block max may be clipped
  by up to a step. Measured worst: 0.00425 of the block max for Q8_0 (half a step is 0.00394),
  0.1248 for Q4_0.
  """
  _, source = gguf_io.open_gguf(ggufs[arch, qtype])
  for name, value in hf_tensors(models[arch][1]).items():
    got = source.read(name)
    if value.ndim == 1:  # vectors are kept in float32
      np.testing.assert_array_equal(got, value)
      continue
    blocks = value.reshape(value.shape[0], -1, 32)
    error = np.abs(got.reshape(blocks.shape) - blocks)
    block_max = np.abs(blocks).max(axis=-1, keepdims=True)
    assert np.all(error <= block_max * bound * (1 + 2.0 ** -10)), name
    assert np.any(error > 0), name  # it was quantized


def test_llama_biases_are_unpermuted(tmp_path):
  import transformers
  config = transformers.LlamaConfig(vocab_size=320, head_dim=16, attention_bias=True, **tiny_pretrained.COMMON)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for layer in model.model.layers:  # transformers starts biases at zero
      for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        proj.bias.normal_()
  path = write_gguf(str(tmp_path / "m.gguf"), model, bpe_vocab(tiny_pretrained.train_tokenizer()))
  config, source = gguf_io.open_gguf(path)
  assert config["attention_bias"] is True
  for name, value in hf_tensors(model).items():
    np.testing.assert_array_equal(source.read(name), value, err_msg=name)


def test_read_slices_match_full_tensor(ggufs):
  for qtype in ("F32", "Q8_0"):
    _, source = gguf_io.open_gguf(ggufs["llama", qtype])
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "model.norm.weight"):
      full = source.read(name)
      index = (slice(3, 17),) + (slice(5, 40),) * (full.ndim - 1)
      np.testing.assert_array_equal(source.read(name, index), full[index])


# --- Config. ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "tied", "llama3"])
def test_config_matches_hf(arch, models, ggufs):
  hf = models[arch][1].config
  config, _ = gguf_io.open_gguf(ggufs[arch, "Q8_0"])
  assert config["architectures"] == ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"]
  assert config["model_type"] == hf.model_type
  for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "max_position_embeddings"):
    assert config[field] == getattr(hf, field), field
  assert config["head_dim"] == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
  rope = dict(hf.rope_parameters)
  assert config["rope_theta"] == rope.pop("rope_theta")
  assert config["rope_parameters"]["rope_theta"] == config["rope_theta"]
  if rope["rope_type"] == "default":
    assert "rope_scaling" not in config
  else:
    assert config["rope_scaling"] == rope


def test_llama3_rope_freqs_with_other_parameters_are_refused(models, tmp_path):
  model = models["llama3"][1]
  freqs = llama3_rope_freqs(model.config)
  freqs[freqs > 1] *= 0.9  # no longer what Llama 3's default low/high factors give
  path = write_gguf(str(tmp_path / "m.gguf"), model, bpe_vocab(tiny_pretrained.train_tokenizer()),
                    rope_freqs=freqs)
  one_line_error(lambda: gguf_io.open_gguf(path), "rope")


# --- Tokenizers. ------------------------------------------------------------------------------------

def test_bpe_tokenizer_gives_the_original_ids(ggufs, tmp_path):
  from tokenizers import Tokenizer
  original = tiny_pretrained.train_tokenizer()
  target = gguf_io.write_tokenizer(ggufs["llama", "Q8_0"], str(tmp_path))
  assert target == os.path.join(str(tmp_path), "tokenizer.json")
  rebuilt = Tokenizer.from_file(target)
  for text in SAMPLE:
    ids = original.encode(text).ids
    assert rebuilt.encode(text).ids == ids, text
    assert rebuilt.decode(ids, skip_special_tokens=False) == original.decode(ids, skip_special_tokens=False)
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == gguf_io.open_gguf(ggufs["llama", "Q8_0"])[0]


def test_bpe_directory_reads_like_a_hugging_face_one(ggufs, tmp_path):
  import transformers
  original = tiny_pretrained.train_tokenizer()
  # (Not qwen2: for that model type transformers swaps in its own Qwen2 pre-tokenizer.)
  gguf_io.write_tokenizer(ggufs["tied", "F32"], str(tmp_path))
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert (tok.bos_token, tok.eos_token, tok.unk_token) == (tiny_pretrained.BOS, tiny_pretrained.EOS,
                                                           tiny_pretrained.UNK)
  for text in SAMPLE:
    assert tok(text)["input_ids"] == original.encode(text).ids, text


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm"])
def test_bpe_pre_tokenizers(pre, models, tmp_path):
  """Each supported `tokenizer.ggml.pre` splits text as the original model family's tokenizer."""
  from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
  from tokenizers import models as tm
  original = Tokenizer(tm.BPE(ignore_merges=pre == "llama-bpe"))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "smollm")
  if pre == "smollm":
    original.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(True), byte_level])
  else:  # as in Llama 3's and Qwen2's tokenizer.json
    digits = r"\p{N}{1,3}" if pre == "llama-bpe" else r"\p{N}"
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits
             + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), "isolated"), byte_level])
  if pre == "qwen2":
    original.normalizer = normalizers.NFC()
  specials = [tiny_pretrained.UNK, tiny_pretrained.BOS, tiny_pretrained.EOS]
  original.train_from_iterator(SAMPLE * 3, trainers.BpeTrainer(
      vocab_size=400, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1], bpe_vocab(original, pre, add_bos=False))
  rebuilt = Tokenizer.from_file(gguf_io.write_tokenizer(path, str(tmp_path / "tok")))
  for text in SAMPLE:
    assert rebuilt.encode(text).ids == original.encode(text).ids, (pre, text)


def test_embedded_tokenizer_json_is_used_as_is(models, tmp_path):
  from tokenizers import Tokenizer
  original = tiny_pretrained.train_tokenizer()

  def vocab(writer):
    bpe_vocab(original, pre="not-a-known-pre")(writer)  # would be refused without the JSON
    writer.add_string("tokenizer.huggingface.json", original.to_str())

  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1], vocab)
  target = gguf_io.write_tokenizer(path, str(tmp_path / "tok"))
  assert Tokenizer.from_file(target).to_str() == original.to_str()


def test_bpe_add_bos(models, tmp_path):
  from tokenizers import Tokenizer
  original = tiny_pretrained.train_tokenizer()
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1], bpe_vocab(original, add_bos=True))
  rebuilt = Tokenizer.from_file(gguf_io.write_tokenizer(path, str(tmp_path / "tok")))
  bos = original.token_to_id(tiny_pretrained.BOS)
  assert rebuilt.encode(SAMPLE[0]).ids == [bos] + original.encode(SAMPLE[0]).ids
  assert rebuilt.encode(SAMPLE[0], add_special_tokens=False).ids == original.encode(SAMPLE[0]).ids


def test_sentencepiece_tokenizer_gives_the_original_ids(models, tmp_path):
  import sentencepiece as spm
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(SAMPLE * 4), encoding="utf-8")
  # Llama's settings: identity normalization, a dummy prefix, whitespace kept, byte fallback.
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / "sp"), model_type="bpe", vocab_size=700,
      hard_vocab_limit=False, byte_fallback=True, character_coverage=0.9995,
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
      split_digits=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
      minloglevel=2)
  original = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1], sentencepiece_vocab(original))
  target = gguf_io.write_tokenizer(path, str(tmp_path / "tok"))
  assert target == str(tmp_path / "tok" / "tokenizer.model")
  rebuilt = spm.SentencePieceProcessor(model_file=target)
  assert rebuilt.GetPieceSize() == original.GetPieceSize()
  assert (rebuilt.bos_id(), rebuilt.eos_id(), rebuilt.unk_id()) == (1, 2, 0)
  unseen = "Unseen: ∮ ⅋ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ byte fallback"  # characters outside the trained vocabulary
  for text in SAMPLE + [unseen]:
    ids = original.encode(text)
    assert rebuilt.encode(text) == ids, text
    assert rebuilt.decode(ids) == original.decode(ids)
  assert any(original.IsByte(i) for i in original.encode(unseen))


# --- Bad input. ---------------------------------------------------------------------------------------

def test_unsupported_architecture(models, tmp_path):
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1],
                    bpe_vocab(tiny_pretrained.train_tokenizer()), arch="gemma")
  one_line_error(lambda: gguf_io.open_gguf(path), "'gemma'")
  one_line_error(lambda: gguf_io.write_tokenizer(path, str(tmp_path / "tok")), "'gemma'")


def test_unknown_tokenizer_model(models, tmp_path):
  def vocab(writer):
    bpe_vocab(tiny_pretrained.train_tokenizer())(writer)
    writer.add_tokenizer_model("bert")  # replaces the 'gpt2' written above

  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1], vocab)
  one_line_error(lambda: gguf_io.write_tokenizer(path, str(tmp_path / "tok")), "'bert'")


def test_split_gguf_part(models, tmp_path):
  def vocab(writer):
    bpe_vocab(tiny_pretrained.train_tokenizer())(writer)
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 3)

  path = write_gguf(str(tmp_path / "m-00001-of-00003.gguf"), models["llama"][1], vocab)
  one_line_error(lambda: gguf_io.open_gguf(path), "split GGUF")


def test_unknown_pre_tokenizer(models, tmp_path):
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1],
                    bpe_vocab(tiny_pretrained.train_tokenizer(), pre="chameleon"))
  one_line_error(lambda: gguf_io.write_tokenizer(path, str(tmp_path / "tok")), "'chameleon'")


def test_not_a_gguf_file(tmp_path, models):
  text = tmp_path / "notes.gguf"
  text.write_text("this is not a GGUF file\n")
  one_line_error(lambda: gguf_io.open_gguf(str(text)), "not a readable GGUF")
  empty = tmp_path / "empty.gguf"
  empty.write_bytes(b"")
  one_line_error(lambda: gguf_io.open_gguf(str(empty)), "not a readable GGUF")
  safetensors = os.path.join(models["llama"][0], "model.safetensors")
  one_line_error(lambda: gguf_io.open_gguf(safetensors), "not a readable GGUF")
  one_line_error(lambda: gguf_io.open_gguf(str(tmp_path / "missing.gguf")), "does not exist")


def test_tensor_type_the_package_cannot_dequantize(models, tmp_path):
  path = write_gguf(str(tmp_path / "m.gguf"), models["llama"][1],
                    bpe_vocab(tiny_pretrained.train_tokenizer()), qtype=Q.Q8_1)
  one_line_error(lambda: gguf_io.open_gguf(path), r"tensor \S+\.weight has type Q8_1")


# --- End to end: logits of the imported model. ----------------------------------------------------------

@pytest.mark.parametrize("arch,qtype,atol", [
    ("llama", "F32", 1e-4), ("qwen2", "F32", 1e-4), ("llama3", "F32", 1e-4), ("tied", "F32", 1e-4),
    # Measured max |logit difference| over seeds 0-2 (logits up to about 1 in size): F16 2e-4 to
    # 3.3e-4; Q8_0 6.2e-3 to 7.4e-3. The tolerances leave about twice that.
    ("llama", "F16", 1e-3), ("llama", "Q8_0", 1.5e-2), ("qwen2", "Q8_0", 1.5e-2),
])
def test_logits_match_hf(arch, qtype, atol, models, ggufs):
  from flan_jax import checkpoints
  from flan_jax.model.transformer import Transformer
  model = models[arch][1]
  tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 11))
  opened = checkpoints.open_pretrained(ggufs[arch, qtype])
  params = checkpoints.load_params(opened)
  got = np.asarray(Transformer(opened.config).apply({"params": params}, tokens))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=atol, rtol=0)
  if qtype != "F32":
    # Given the file's rounded weights, Hugging Face's model computes the same logits as ours.
    rounded = copy.deepcopy(model)
    source = opened.source
    rounded.load_state_dict({k: torch.from_numpy(source.read(k)) for k in source.keys()}, strict=False)
    with torch.no_grad():
      want = rounded(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_a_gguf_file_is_a_starting_point_like_a_model_directory(models, ggufs):
  """What the trainer and eval binaries call for INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH."""
  from flan_jax import checkpoints
  from flan_jax.model import partitioning
  from flan_jax.text import tokenizers
  path, (directory, _) = ggufs["llama", "F32"], models["llama"]
  assert checkpoints.is_pretrained(path)
  assert checkpoints.pretrained_model_config(path) == checkpoints.pretrained_model_config(directory)
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  config = checkpoints.pretrained_model_config(path)
  step, params = checkpoints.restore_params(path, config, mesh, partitioning.axis_rules(), None)
  want = checkpoints.load_params(checkpoints.open_pretrained(directory))
  assert step == 0
  assert_trees_equal(params, want)
  from_gguf = checkpoints.starting_vocabulary(path)
  original = tokenizers.from_directory(directory)
  text = " ".join(SAMPLE)
  assert from_gguf.encode(text) == original.encode(text)
  assert (from_gguf.bos_id, from_gguf.eos_id) == (original.bos_id, original.eos_id)
