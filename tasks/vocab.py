"""The vocabulary every flan_jax task tokenizes with.

The default is seqio's byte-level vocabulary: it needs no file and no download. Set the
environment variable FLAN_JAX_SPM_MODEL to a SentencePiece model path to tokenize with the
vocabulary of the model being tuned; it is read once, when `tasks` is first imported.
"""

import functools
import os

import seqio

SPM_ENV = "FLAN_JAX_SPM_MODEL"


@functools.cache
def vocabulary() -> seqio.Vocabulary:
  path = os.environ.get(SPM_ENV)
  if not path:
    return seqio.ByteVocabulary()
  if not os.path.exists(path):
    raise FileNotFoundError(f"{SPM_ENV}={path} does not exist; point it at a SentencePiece .model file")
  return seqio.SentencePieceVocabulary(path)


def output_features() -> dict[str, seqio.Feature]:
  vocab = vocabulary()
  return {
      "inputs": seqio.Feature(vocab, add_eos=True, required=False),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
