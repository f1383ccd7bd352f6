"""The error type for mistakes a user can fix: the binaries print it as one line and exit non-zero."""


class UserError(ValueError):
  """Bad input (unknown task, missing MODEL_DIR, no checkpoint, ...); the message says how to fix it."""
