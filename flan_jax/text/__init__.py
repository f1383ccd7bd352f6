"""Text: what a run tokenizes with and how an example becomes the decoder's tokens.

- records.py: tokenizer files and the vocabulary record, without seqio or TensorFlow: a model directory's special
  ids, BOS rule and chat template, a tokenizer.json with them (HuggingFaceTokenizer), and the record kept beside a
  checkpoint (describe, save, read, check_same) as a plain dict and files; the example formats' names.
- gguf_tokenizer.py: the tokenizer inside a llama.cpp GGUF file, written out as those files.
- tokenizers.py: Hugging Face tokenizer.json and SentencePiece .model files as seqio vocabularies, built from what
  records.py reads of a model directory (from_directory) or a record (load, build).
- vocabulary.py: the run's vocabulary (gin's `run_vocabulary`, `pretrained_vocabulary`, `byte_vocabulary`) and the
  RunVocabulary every task holds, which resolves it at call time.
- formats.py: the run's example format (gin's `example_format`), chat templates, the tokenizing seqio
  preprocessor, the decoder's start token and the tokens that stop a decode.
- run.py: `run_text(...)`, the one context that holds the vocabulary and format where gin binds none,
  opened by the trainer's train() and the evaluator's evaluate() for their length. No run state lives
  in a module global.

Imports: the leaves (flan_jax.errors, flan_jax.storage, flan_jax.lazy), seqio, TensorFlow, tokenizers,
sentencepiece, gguf and jinja2; records.py and gguf_tokenizer.py never seqio or TensorFlow. Never JAX, and no other
flan_jax folder (model, checkpoints, data, training, evaluation, ...): data/ and checkpoints/ build on this folder,
and flan_tasks imports it to register tasks.

This package imports records.py and gguf_tokenizer.py, and the other modules when one of their names is first
asked of it (PEP 562), so that reading a record loads neither seqio nor TensorFlow. Their gin configurables
(run_vocabulary, pretrained_vocabulary, byte_vocabulary in vocabulary.py; example_format in formats.py) are
registered when those modules are imported: every command imports them (through data/ and checkpoints.restore),
and so does flan_tasks.
"""

from flan_jax import lazy
from flan_jax.text import gguf_tokenizer, records

# The modules that import seqio and TensorFlow, and the names this package gives of them, imported on first use.
_LAZY = {
    "formats": "formats", "run": "run", "tokenizers": "tokenizers", "vocabulary": "vocabulary",
    "example_format": "formats", "RunText": "run", "run_text": "run", "HuggingFaceVocabulary": "tokenizers",
    "SentencePieceVocabulary": "tokenizers", "bos_id_or_zero": "tokenizers", "from_directory": "tokenizers",
    "RunVocabulary": "vocabulary", "byte_vocabulary": "vocabulary", "pretrained_vocabulary": "vocabulary",
    "run_vocabulary": "vocabulary",
}

__getattr__, __dir__ = lazy.exports(__name__, _LAZY)


__all__ = [
    "HuggingFaceVocabulary", "RunText", "RunVocabulary", "SentencePieceVocabulary", "bos_id_or_zero",
    "byte_vocabulary", "example_format", "formats", "from_directory", "gguf_tokenizer", "pretrained_vocabulary",
    "records", "run", "run_text", "run_vocabulary", "tokenizers", "vocabulary",
]
