"""Text: what a run tokenizes with and how an example becomes the decoder's tokens (seqio and TensorFlow).

- tokenizers.py: Hugging Face tokenizer.json and SentencePiece .model files as seqio vocabularies, read
  from a model directory (from_directory), and their record beside a checkpoint (describe, save, load,
  check_same).
- gguf_tokenizer.py: the tokenizer inside a llama.cpp GGUF file, written out as those files.
- vocabulary.py: the run's vocabulary (gin's `run_vocabulary`, `pretrained_vocabulary`, `byte_vocabulary`) and the
  RunVocabulary every task holds, which resolves it at call time.
- formats.py: the run's example format (gin's `example_format`), chat templates, the tokenizing seqio
  preprocessor, the decoder's start token and the tokens that stop a decode.
- run.py: `run_text(...)`, the one context that holds the vocabulary and format where gin binds none,
  opened by the trainer's train() and the evaluator's evaluate() for their length. No run state lives
  in a module global.

Imports: the leaves (flan_jax.errors), seqio, TensorFlow, tokenizers, sentencepiece, gguf and jinja2.
Never JAX, and no other flan_jax folder (model, checkpoints, data, training, evaluation, ...): data/ and
checkpoints/ build on this folder, and flan_tasks imports it to register tasks.

Importing this package registers its gin configurables (run_vocabulary, pretrained_vocabulary,
byte_vocabulary, example_format).
"""

from flan_jax.text import formats, gguf_tokenizer, run, tokenizers, vocabulary
from flan_jax.text.formats import example_format
from flan_jax.text.run import RunText, run_text
from flan_jax.text.tokenizers import HuggingFaceVocabulary, SentencePieceVocabulary, bos_id_or_zero, from_directory
from flan_jax.text.vocabulary import RunVocabulary, byte_vocabulary, pretrained_vocabulary, run_vocabulary

__all__ = [
    "HuggingFaceVocabulary", "RunText", "RunVocabulary", "SentencePieceVocabulary", "bos_id_or_zero",
    "byte_vocabulary", "example_format", "formats", "from_directory", "gguf_tokenizer", "pretrained_vocabulary", "run",
    "run_text", "run_vocabulary", "tokenizers", "vocabulary",
]
