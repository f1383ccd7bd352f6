"""Tests for flan_jax/text/run.py: the run's vocabulary and format live as long as the run, never in a global.

Two trainer runs and their evals in one process, with different vocabularies and formats, each use their
own, and nothing is reset between them (as a study runs its jobs)."""

import json
import os

import gin
import jax
import pytest
import seqio

from flan_jax.evaluation import evaluator
from flan_jax.model import partitioning
from flan_jax.text import formats, run_text, tokenizers, vocabulary
from flan_jax.training import trainer
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from tests import tiny_pretrained
from tests.conftest import TINY

LENGTHS = {"inputs": 64, "targets": 8}
EVAL_TASK = "embedded_color_nli_scoring_t0"


@pytest.fixture
def bpe(tmp_path):
  tiny_pretrained.train_tokenizer().save(str(tmp_path / "tokenizer.json"))
  return tokenizers.from_directory(str(tmp_path))


def _nothing_chosen():
  return isinstance(vocabulary.run_vocabulary(), seqio.ByteVocabulary) and formats.example_format() == "prompt"


def _recorded(model_dir):
  directory = os.path.join(model_dir, "vocabulary")
  with open(os.path.join(directory, "format.json")) as f:
    return tokenizers.describe(tokenizers.load(directory))["kind"], json.load(f)["format"]


def test_two_runs_and_their_evals_in_one_process_keep_their_own_vocabulary(bpe, tmp_path):
  gin.clear_config()
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  kwargs = dict(mixture_or_task_name="embedded_no_nli", task_feature_lengths=LENGTHS, train_steps=1, batch_size=4,
                model_config=TINY, mesh=mesh, checkpoint_period=1, async_checkpointing=False)
  first, second = str(tmp_path / "first"), str(tmp_path / "second")

  with run_text(vocabulary=bpe, example_format="t5"):  # a caller's choice, for this run only
    trainer.train(first, **kwargs)
  assert _recorded(first) == ("huggingface", "t5") and _nothing_chosen()

  def evaluate(model_dir):
    report, = evaluator.evaluate(model_dir, mixture_or_task_name=EVAL_TASK, task_feature_lengths=LENGTHS,
                                 batch_size=8, num_examples=8, mesh=mesh)
    return report

  assert evaluate(first)["example_format"] == "t5"  # follows the run's record: its tokenizer, its format
  assert _nothing_chosen()  # ... and leaves nothing behind

  trainer.train(second, **kwargs)  # nothing chosen: bytes and 'prompt', whatever the eval before followed
  assert _recorded(second) == ("byte", "prompt")
  assert evaluate(second)["example_format"] == "prompt"
  assert evaluate(first)["example_format"] == "t5"
  assert _nothing_chosen()


def test_gin_wins_over_run_text_and_run_text_over_the_defaults(bpe):
  gin.clear_config()
  spm = tokenizers.SentencePieceVocabulary(os.path.join(os.path.dirname(seqio.__file__), "test_data",
                                                        "sentencepiece", "sentencepiece.model"))
  run = vocabulary.RunVocabulary()
  try:
    with run_text(vocabulary=bpe, example_format="chat"):
      assert run.resolve() is bpe and formats.example_format() == "chat"
      gin.bind_parameter("run_vocabulary.vocabulary", spm)
      gin.bind_parameter("example_format.name", "t5")
      assert run.resolve() == spm and formats.example_format() == "t5"  # gin keeps a copy of what it binds
  finally:
    gin.clear_config()
  assert _nothing_chosen()


def test_run_text_nests_and_ends_with_its_block(bpe):
  with run_text(vocabulary=bpe) as outer:
    with run_text(example_format="t5") as inner:  # keeps the enclosing vocabulary
      assert inner.vocabulary is bpe and vocabulary.run_vocabulary() is bpe and formats.example_format() == "t5"
      inner.vocabulary = seqio.ByteVocabulary()  # an evaluator fills its own as it follows a checkpoint
    assert vocabulary.run_vocabulary() is bpe and outer.example_format is None
    with pytest.raises(RuntimeError):
      with run_text(example_format="chat"):
        raise RuntimeError("a failed run")
    assert formats.example_format() == "prompt"
  assert _nothing_chosen()
  with pytest.raises(ValueError, match="concrete vocabulary"):
    with run_text(vocabulary=vocabulary.RunVocabulary()):
      pass
