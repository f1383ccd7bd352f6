"""Tests for flan_jax/text/tokenizers.py and vocabulary.py: tokenizer-backed vocabularies, their record and the
run's choice."""

import json
import os
import pickle
import shutil

import gin
import pytest
import sentencepiece
import seqio
import tensorflow as tf

from flan_jax.errors import UserError
from flan_jax.text import run_text, tokenizers, vocabulary
from tests import tiny_pretrained
from tests.checks import one_line_error

EXTRA = ["  two leading spaces", "\ttab\tseparated\t\tcells", "lines\n\n\nwith gaps\n",
         "emoji 🎉🙂 and ZWJ 👩‍💻", "trailing space ", "   ", "", "Ωmega, ж, ع, 한국어, हिन्दी"]
TEXTS = tiny_pretrained.TEXT + EXTRA
LENGTHS = {"targets": 64}
SEQIO_SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")


@pytest.fixture(scope="module")
def tokenizer():
  return tiny_pretrained.train_tokenizer()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer):
  """A model directory with tokenizer.json and a config.json listing two EOS ids."""
  directory = tmp_path_factory.mktemp("hf")
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
  return str(directory)


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
  """A byte-fallback SentencePiece model that keeps whitespace as it is (like Llama 2's)."""
  directory = tmp_path_factory.mktemp("spm")
  (directory / "text.txt").write_text("\n".join(tiny_pretrained.TEXT * 3))
  sentencepiece.SentencePieceTrainer.train(
      input=str(directory / "text.txt"), model_prefix=str(directory / "sp"), vocab_size=400,
      model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, minloglevel=2)
  return str(directory / "sp.model")


@pytest.fixture
def clean_run():
  """Leaves no gin binding behind."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def register():
  """Registers tasks of target strings under unique names and removes them afterwards."""
  names = []

  def add(name, vocab, texts):
    def dataset_fn(split, shuffle_files, seed=None):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices({"targets": texts})

    seqio.TaskRegistry.add(
        name, source=seqio.dataset_providers.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={"targets": seqio.Feature(vocab, add_eos=True)})
    names.append(name)
    return name

  yield add
  for name in names:
    seqio.TaskRegistry.remove(name)


def examples(name, *, pack=False, bos_id=0, n=100):
  ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split="train", shuffle=False,
                         feature_converter=seqio.DecoderFeatureConverter(pack=pack, bos_id=bos_id))
  return list(ds.take(n).as_numpy_iterator())


def ids_of(row):
  """The non-padding decoder target ids of an unpacked row."""
  return [int(i) for i in row["decoder_target_tokens"] if i]


def test_hf_ids_are_the_tokenizers_ids(hf_dir, tokenizer):
  vocab = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"))
  expected = [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
  assert [vocab.encode(t) for t in TEXTS] == expected
  assert [vocab.encode_tf(tf.constant(t)).numpy().tolist() for t in TEXTS] == expected
  batch = vocab.encode_tf(tf.constant(TEXTS))
  assert isinstance(batch, tf.RaggedTensor) and batch.to_list() == expected
  grid = vocab.encode_tf(tf.constant([TEXTS[:2], TEXTS[2:4]]))
  assert grid.to_list() == [expected[:2], expected[2:4]]
  mapped = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
  assert mapped.element_spec.shape.as_list() == [None]
  assert [x.tolist() for x in mapped.as_numpy_iterator()] == expected


def test_hf_decode_round_trips_and_drops_special_tokens(hf_dir):
  vocab = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"))
  for text in TEXTS:
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert vocab.decode([vocab.bos_id] + ids + [vocab.eos_id, 0, 0] + ids) == text
  padded = tf.ragged.constant([vocab.encode(t) + [vocab.eos_id] for t in TEXTS]).to_tensor()
  assert [t.decode() for t in vocab.decode_tf(padded).numpy()] == TEXTS
  assert vocab.decode_tf(padded[0]).numpy().decode() == TEXTS[0]


def test_hf_ids_and_sizes(hf_dir, tokenizer):
  vocab = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"))
  assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (1, 2, 0, 0)
  assert vocab.vocab_size == tokenizer.get_vocab_size(with_added_tokens=True) == 320
  given = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"), bos_id=5, eos_id=6)
  assert (given.bos_id, given.eos_id) == (5, 6)


def test_hf_pickles_and_compares(hf_dir, tmp_path):
  vocab = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"))
  copy = str(tmp_path / "copy.json")
  shutil.copyfile(vocab.tokenizer_file, copy)
  twin = tokenizers.HuggingFaceVocabulary(copy)
  assert twin == vocab and hash(twin) == hash(vocab)
  assert tokenizers.HuggingFaceVocabulary(copy, eos_id=7) != vocab
  again = pickle.loads(pickle.dumps(vocab))
  assert again == vocab and again.encode(TEXTS[4]) == vocab.encode(TEXTS[4])


def test_hf_tokenizes_in_a_seqio_task(hf_dir, register):
  vocab = tokenizers.HuggingFaceVocabulary(os.path.join(hf_dir, "tokenizer.json"))
  name = register("vocab_test_hf_task", vocab, TEXTS)
  rows = examples(name)
  assert [ids_of(r) for r in rows] == [vocab.encode(t)[:LENGTHS["targets"] - 1] + [2] for t in TEXTS]


def test_sentencepiece_ids_are_the_librarys_ids(spm_file):
  vocab = tokenizers.SentencePieceVocabulary(spm_file)
  processor = sentencepiece.SentencePieceProcessor(model_file=spm_file)
  expected = processor.encode(TEXTS)
  assert [vocab.encode(t) for t in TEXTS] == expected
  assert [vocab.encode_tf(tf.constant(t)).numpy().tolist() for t in TEXTS] == expected
  assert vocab.encode_tf(tf.constant(TEXTS)).to_list() == expected
  assert [vocab.decode(ids) for ids in expected] == TEXTS
  padded = tf.ragged.constant([ids + [vocab.eos_id] for ids in expected]).to_tensor()
  assert [t.decode() for t in vocab.decode_tf(padded).numpy()] == TEXTS
  assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (1, 2, 0)
  assert vocab.vocab_size == 400
  given = tokenizers.SentencePieceVocabulary(spm_file, bos_id=3, eos_id=4)
  assert (given.bos_id, given.eos_id) == (3, 4) and given != vocab
  assert pickle.loads(pickle.dumps(vocab)) == vocab


def test_seqio_test_sentencepiece_model():
  vocab = tokenizers.SentencePieceVocabulary(SEQIO_SPM)
  processor = sentencepiece.SentencePieceProcessor(model_file=SEQIO_SPM)
  expected = processor.encode(TEXTS)
  assert [vocab.encode(t) for t in TEXTS] == expected
  assert vocab.encode_tf(tf.constant(TEXTS)).to_list() == expected
  assert [vocab.decode(ids) for ids in expected] == [processor.decode(ids) for ids in expected]
  assert (vocab.bos_id, vocab.eos_id, vocab.vocab_size) == (None, 1, processor.get_piece_size())
  assert tokenizers.bos_id_or_zero(vocab) == 0


def test_from_directory_reads_ids_from_the_configs(hf_dir, spm_file, tmp_path):
  vocab = tokenizers.from_directory(hf_dir)
  assert isinstance(vocab, tokenizers.HuggingFaceVocabulary)
  assert (vocab.bos_id, vocab.eos_id) == (1, 2)  # eos_token_id [2, 0]: the first
  sp_dir = tmp_path / "sp"
  sp_dir.mkdir()
  shutil.copyfile(spm_file, sp_dir / "tokenizer.model")
  (sp_dir / "config.json").write_text(json.dumps({"bos_token_id": 1}))
  (sp_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 9, "eos_token_id": 8}))
  vocab = tokenizers.from_directory(str(sp_dir))
  assert isinstance(vocab, tokenizers.SentencePieceVocabulary)
  assert (vocab.bos_id, vocab.eos_id) == (1, 8)


def test_from_directory_without_tokenizer(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  one_line_error(lambda: tokenizers.from_directory(str(tmp_path)), "no tokenizer.json or tokenizer.model")
  with pytest.raises(UserError, match="pretrained_vocabulary.path=.*missing is not a directory"):
    vocabulary.pretrained_vocabulary(str(tmp_path / "missing"))


@pytest.mark.parametrize("kind", ["byte", "huggingface", "sentencepiece"])
def test_describe_save_load(kind, hf_dir, spm_file, tmp_path):
  vocab = {"byte": seqio.ByteVocabulary(), "huggingface": tokenizers.from_directory(hf_dir),
           "sentencepiece": tokenizers.SentencePieceVocabulary(spm_file)}[kind]
  record = tokenizers.describe(vocab)
  assert record["kind"] == kind and record["vocab_size"] == vocab.vocab_size
  assert (record["sha256"] is None) == (kind == "byte")
  assert json.loads(json.dumps(record)) == record
  assert tokenizers.load(str(tmp_path)) is None
  tokenizers.save(vocab, str(tmp_path))
  again = tokenizers.load(str(tmp_path))
  assert again == vocab and tokenizers.describe(again) == record
  assert tokenizers.from_directory(str(tmp_path)) == vocab
  with open(tmp_path / tokenizers.RECORD) as f:
    tokenizers.check_same(json.load(f), again, "checkpoint x")


def test_check_same_names_both_vocabularies(hf_dir, tmp_path):
  vocab = tokenizers.from_directory(hf_dir)
  other_file = str(tmp_path / "tokenizer.json")
  tiny_pretrained.train_tokenizer(vocab_size=300).save(other_file)
  other = tokenizers.HuggingFaceVocabulary(other_file)
  record = tokenizers.describe(vocab)
  tokenizers.check_same(record, tokenizers.HuggingFaceVocabulary(vocab.tokenizer_file, 1, 2), "here")
  message = one_line_error(lambda: tokenizers.check_same(record, other, "checkpoint /ckpt/7"),
                           r"checkpoint /ckpt/7.*size 320.*size 300")
  assert record["sha256"][:12] in message
  with pytest.raises(UserError, match=r"huggingface .*byte"):
    tokenizers.check_same(record, seqio.ByteVocabulary(), "eval")


def test_run_vocabulary_follows_gin_then_run_text(hf_dir, spm_file, register, clean_run):
  del clean_run
  run = vocabulary.RunVocabulary()
  name = register("vocab_test_run_task", run, TEXTS[:3])  # before any binding, as tasks are
  assert isinstance(vocabulary.run_vocabulary(), seqio.ByteVocabulary)
  assert not vocabulary.is_configured()
  assert run.encode("ab") == [100, 101] and run.eos_id == 1 and tokenizers.bos_id_or_zero(run) == 0
  byte_ids = [[b + 3 for b in t.encode()][:LENGTHS["targets"] - 1] + [1] for t in TEXTS[:3]]
  assert [ids_of(r) for r in examples(name)] == byte_ids

  spm = tokenizers.SentencePieceVocabulary(spm_file)
  with run_text(vocabulary=spm):
    assert run.resolve() is spm and run.encode(TEXTS[0]) == spm.encode(TEXTS[0])

    gin.parse_config(f'run_vocabulary.vocabulary = @pretrained_vocabulary()\n'
                     f'pretrained_vocabulary.path = "{hf_dir}"')
    hf = tokenizers.from_directory(hf_dir)
    assert vocabulary.is_configured() and run.resolve() == hf  # gin wins over run_text
    assert run.resolve() is vocabulary.pretrained_vocabulary(hf_dir)  # cached per path
    assert run.encode(TEXTS[4]) == hf.encode(TEXTS[4]) and run.vocab_size == 320
    assert run.decode(hf.encode(TEXTS[4]) + [2, 0]) == TEXTS[4]
    assert run.encode_tf(tf.constant(TEXTS)).to_list() == [hf.encode(t) for t in TEXTS]
    assert run.decode_tf(tf.constant(hf.encode(TEXTS[1]) + [2])).numpy().decode() == TEXTS[1]
    rows = examples(name)
    assert [ids_of(r) for r in rows] == [hf.encode(t) + [2] for t in TEXTS[:3]]

    gin.clear_config()
    assert run.resolve() is spm
  assert isinstance(run.resolve(), seqio.ByteVocabulary)  # run_text's choice ended with its block


def test_run_vocabulary_in_a_packed_dataset(hf_dir, register, clean_run):
  del clean_run
  gin.parse_config(f'run_vocabulary.vocabulary = @pretrained_vocabulary()\n'
                   f'pretrained_vocabulary.path = "{hf_dir}"')
  run = vocabulary.RunVocabulary()
  name = register("vocab_test_packed_task", run, TEXTS[:4])
  bos = tokenizers.bos_id_or_zero(run)
  assert bos == 1
  rows = examples(name, pack=True, bos_id=bos)
  targets = [int(i) for r in rows for i in r["decoder_target_tokens"] if i]
  assert targets == [i for t in TEXTS[:4] for i in run.encode(t) + [run.eos_id]]
  first = rows[0]
  assert first["decoder_input_tokens"][0] == bos
  starts = first["decoder_positions"] == 0
  assert all(first["decoder_input_tokens"][starts & (first["decoder_segment_ids"] > 0)] == bos)


def test_run_vocabulary_is_one_value():
  run = vocabulary.RunVocabulary()
  assert run == vocabulary.RunVocabulary() and hash(run) == hash(vocabulary.RunVocabulary())
  assert pickle.loads(pickle.dumps(run)) == run
  assert tokenizers.bos_id_or_zero(seqio.ByteVocabulary()) == 0
