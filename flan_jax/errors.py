"""Errors a user can fix (the binaries print each as one line and exit non-zero), and their causes."""

from typing import Iterator, Optional


class UserError(ValueError):
  """Bad input (unknown task, missing MODEL_DIR, no checkpoint, ...); the message says how to fix it."""


class DiskFullError(OSError):
  """A write failed for lack of space; says where, at which step, and which checkpoint is complete."""


class StoreUnavailableError(OSError):
  """A bucket stopped answering (the store or the network is down) after its client's retries; says where and
  at which step. The checkpoints complete before then are intact."""


def chain(e: Optional[BaseException]) -> Iterator[BaseException]:
  """The exception, then what it was raised from or during (gin and orbax wrap the real cause)."""
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (its type name if the message is empty)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__
