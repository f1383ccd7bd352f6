"""A package's names that are imported on first use (PEP 562): the re-exports of modules that it keeps off its own
import path (text/ and checkpoints/ keep seqio and TensorFlow off the harness's)."""

import importlib
import sys
from typing import Callable, Mapping


def exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """(__getattr__, __dir__) for `package`: each of `names` (a module of the package, or a name in one: name ->
  module) is imported when it is first asked for."""

  def get(name: str):
    if name not in names:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(f"{package}.{names[name]}")
    return module if name == names[name] else getattr(module, name)

  def listing() -> list[str]:
    return sorted(set(vars(sys.modules[package])) | set(names))

  return get, listing
