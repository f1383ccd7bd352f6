"""Type and range checks for the numbers and flags set in gin; a bad one is a one-line UserError naming it.

Each message names the setting, the value it got (and its type when the type is wrong), what is allowed
and the flag that sets it, e.g. "BATCH_SIZE=0 must be a positive integer; pass --gin.BATCH_SIZE=<n>".
"""

import ast
import math
import numbers
import re
from typing import Any, Mapping, Optional

import numpy as np

from flan_jax.errors import UserError


def _fail(name: str, value: Any, allowed: str, flag: Optional[str], example: str, wrong_type: bool) -> UserError:
  kind = type(value).__name__
  got = f" ({'an' if kind[:1] in 'aeiou' else 'a'} {kind})" if wrong_type else ""
  return UserError(f"{name}={value!r}{got} must be {allowed}; pass --gin.{flag or name}={example}")


def integer(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False, allow: tuple = (),
            flag: Optional[str] = None) -> Optional[int]:
  """`value` as an int >= `minimum` (or one of `allow`, or None if `allow_none`); True/False and 8.0 are refused."""
  if value is None and allow_none:
    return None
  is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if is_int and (value >= minimum or value in allow):
    return int(value)
  allowed = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
  allowed += "".join(f" or {a}" for a in allow) + (" or None" if allow_none else "")
  raise _fail(name, value, allowed, flag, "<n>", not is_int)


def number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, allow_none: bool = False,
           flag: Optional[str] = None) -> Optional[float]:
  """`value` as a finite float within [low, high] (an end excluded when `*_open`); strings and bools are refused."""
  if value is None and allow_none:
    return None
  is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
  ok = is_number and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if ok:
    return float(value)
  if low == 0 and low_open and high is None:
    allowed = "a positive number"
  elif high is None:
    allowed = "a finite number" if low is None else f"a number {'>' if low_open else '>='} {low}"
  elif low is None:
    allowed = f"a number {'<' if high_open else '<='} {high}"
  else:
    allowed = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  raise _fail(name, value, allowed + (" or None" if allow_none else ""), flag, "<x>", not is_number)


def boolean(name: str, value: Any, *, flag: Optional[str] = None) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise _fail(name, value, "True or False", flag, "True", True)


def feature_lengths(name: str, value: Any, *, flag: Optional[str] = None) -> dict[str, int]:
  """A {'inputs': n, 'targets': m} dict of positive integer lengths."""
  example = "\"{'inputs': 256, 'targets': 64}\""
  if not (isinstance(value, Mapping) and set(value) == {"inputs", "targets"}):
    raise UserError(f"{name}={value!r} is not a dict of 'inputs' and 'targets' lengths; "
                    f"pass --gin.{flag or name}={example}")
  for key, length in value.items():
    if not (isinstance(length, numbers.Integral) and not isinstance(length, bool) and length >= 1):
      raise UserError(f"{name}[{key!r}]={length!r} must be a positive integer; pass --gin.{flag or name}={example}")
  return {k: int(v) for k, v in value.items()}


def as_gin_value(value: str) -> str:
  """Gin literals pass through; anything else (a path, a task name) becomes a quoted string.

  Literals are numbers, True/False/None, quoted strings, lists, tuples and dicts of them, `@name`
  references and `%NAME` macros (also inside a list or dict). `2024_runs/r1` is a string even
  though it starts with a digit.
  """
  text = value.strip()
  if text.startswith(("@", "%")):
    return value
  try:
    ast.literal_eval(text)
    return value
  except (ValueError, SyntaxError):
    pass
  if text[:1] in "[({" and re.search(r"[@%]", text):  # a container holding references
    return value
  return repr(value)
