"""The run's text settings where gin gives none: one context, opened for the length of a train or an eval.

A vocabulary or example format bound in gin (`run_vocabulary.vocabulary`, `example_format.name`) always
wins. Where gin binds none, `run_vocabulary()` and `example_format()` read the innermost open
`run_text(...)`, else fall back to seqio's bytes and 'prompt'. The trainer's `train()` opens one for its
run (the vocabulary and format it checked and recorded); the evaluator's `evaluate()` opens one and fills
it from the first checkpoint that records a vocabulary or format. Nothing outlives the `with` block, so
one run never sees what an earlier run in the same process chose.

The context is a `contextvars.ContextVar`: it follows the calling thread (and asyncio task), not the
process. tf.data's Python callbacks run on other threads, so everything that reads it does so when a
dataset is built or a decode is made, on the caller's thread, as seqio calls a task's vocabulary.
"""

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Optional

import seqio


@dataclasses.dataclass
class RunText:
  """What this run tokenizes with and how it formats examples, where gin binds neither (None: not chosen)."""
  vocabulary: Optional[seqio.Vocabulary] = None
  example_format: Optional[str] = None


_current: contextvars.ContextVar[Optional[RunText]] = contextvars.ContextVar("flan_jax_run_text", default=None)


def current() -> RunText:
  """The innermost open run_text's settings (outside any, a new empty RunText: nothing chosen)."""
  settings = _current.get()
  return settings if settings is not None else RunText()


@contextlib.contextmanager
def run_text(vocabulary: Optional[seqio.Vocabulary] = None,
             example_format: Optional[str] = None) -> Iterator[RunText]:
  """Opens this run's text settings for the `with` block; yields them (the evaluator sets them as it learns them).

  A setting left None keeps the enclosing run_text's. Changing the yielded RunText changes this block's
  settings only; the enclosing ones come back when the block ends, however it ends.
  """
  if vocabulary is not None and hasattr(type(vocabulary), "resolve"):
    raise ValueError("run_text needs a concrete vocabulary, not a RunVocabulary (which reads run_text)")
  outer = current()
  settings = RunText(vocabulary if vocabulary is not None else outer.vocabulary,
                     example_format if example_format is not None else outer.example_format)
  token = _current.set(settings)
  try:
    yield settings
  finally:
    _current.reset(token)
