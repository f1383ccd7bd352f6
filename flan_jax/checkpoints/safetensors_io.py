"""Safetensors files as Hugging Face writes them: read slices of a (sharded) directory, write sharded.

Reading memory-maps each file and copies only the slices asked for, so a host touches just the
blocks its devices hold; no pickle is ever loaded. Bfloat16 is read and written through ml_dtypes.
"""

import errno
import json
import os
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from flan_jax import files as files_lib
from flan_jax.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_header(path: str) -> dict:
  """The JSON header of one .safetensors file: {name: {dtype, shape, data_offsets}, __metadata__}."""
  try:
    with open(path, "rb") as f:
      (size,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(size))
  except (OSError, struct.error, ValueError) as e:
    raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__})") from e
  header["__data_start__"] = 8 + size
  return header


def _check_size(path: str, header: dict) -> None:
  """Refuses a file shorter than its header says (a copy or download cut short)."""
  ends = [entry["data_offsets"][1] for name, entry in header.items() if not name.startswith("__")]
  expected, size = header["__data_start__"] + max(ends, default=0), os.path.getsize(path)
  if size < expected:
    raise UserError(f"{path} is truncated: {size} bytes, its header describes {expected}; copy or download it "
                    "again")


class SafetensorsDirectory:
  """The tensors of a Hugging Face model directory (model.safetensors or shards with an index)."""

  def __init__(self, directory: str):
    self.directory = directory
    index_file, single = os.path.join(directory, INDEX), os.path.join(directory, SINGLE)
    if os.path.isfile(index_file):
      with open(index_file) as f:
        weight_map = json.load(f)["weight_map"]
    elif os.path.isfile(single):
      weight_map = None
    else:
      check_weights(directory, os.listdir(directory))
    files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
      raise UserError(f"{directory}: shard {missing[0]} named in {INDEX} is missing"
                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    self._headers = {f: read_header(os.path.join(directory, f)) for f in files}
    for f, header in self._headers.items():
      _check_size(os.path.join(directory, f), header)
    self._where = {name: f for f, header in self._headers.items() for name in header
                   if not name.startswith("__")}

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entry(name)["shape"])

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
    """A copy of tensor[index]; only the pages that hold the slice are read from disk.

    The file is mapped for this read alone, so pages read for earlier blocks do not stay in
    this process's memory.
    """
    entry, file = self._entry(name), self._where[name]
    if entry["dtype"] not in DTYPES:
      raise UserError(f"{self.directory}/{file}: tensor {name} has unsupported dtype {entry['dtype']}")
    start, end = entry["data_offsets"]
    dtype, shape = np.dtype(DTYPES[entry["dtype"]]), tuple(entry["shape"])
    if end - start != dtype.itemsize * int(np.prod(shape)):
      raise UserError(f"{self.directory}/{file}: tensor {name} is truncated or damaged")
    if not shape:
      return np.zeros((), dtype)
    mapped = np.memmap(os.path.join(self.directory, file), dtype=dtype, mode="r",
                       offset=self._headers[file]["__data_start__"] + start, shape=shape)
    try:
      return np.array(mapped[index])
    finally:
      del mapped

  def _entry(self, name: str) -> dict:
    if name not in self._where:
      raise UserError(f"{self.directory}: no tensor named {name}")
    return self._headers[self._where[name]][name]


def check_weights(directory: str, names: list[str]) -> None:
  """Refuses a model directory whose file names `names` include neither model.safetensors nor an index,
  saying so when all it has is pickled weights."""
  if SINGLE in names or INDEX in names:
    return
  pickled = [f for f in names if f.endswith((".bin", ".pt", ".pth"))]
  hint = " (only pickled weights were found; re-save them with safe_serialization=True)" if pickled else ""
  raise UserError(f"{directory} has no {SINGLE} or {INDEX}{hint}")


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  """Groups tensors, in order, into files of at most `max_shard_bytes` (a bigger tensor gets its own)."""
  shards: list[list[str]] = [[]]
  used = 0
  for name, size in sizes:
    if shards[-1] and used + size > max_shard_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += size
  return shards


def write_sharded(tensors: Iterator[tuple[str, np.ndarray]], directory: str, sizes: list[tuple[str, int]],
                  max_shard_bytes: int, write: bool = True) -> list[str]:
  """Writes tensors as they arrive, one file at a time; returns the file names.

  At most one file's tensors are held in memory. Each file is written under a temporary name and
  renamed when complete. With several files, an index maps each tensor to its file.
  """
  from safetensors.numpy import save_file
  shards = plan_shards(sizes, max_shard_bytes)
  names = [SINGLE] if len(shards) == 1 else [
      f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  file_of = {name: names[k] for k, shard in enumerate(shards) for name in shard}
  pending: dict[str, np.ndarray] = {}
  for k, shard in enumerate(shards):
    for name in shard:
      got, value = next(tensors)
      if got != name:
        raise ValueError(f"tensors arrive out of the planned order: {got} instead of {name}")
      pending[name] = np.ascontiguousarray(value)
    if write:
      path = os.path.join(directory, names[k])
      try:
        save_file(pending, files_lib.temporary(path), metadata={"format": "pt"})
        os.replace(files_lib.temporary(path), path)
      except BaseException as e:
        if os.path.exists(files_lib.temporary(path)):
          os.remove(files_lib.temporary(path))
        if "No space left on device" in str(e):  # safetensors raises its own error type, with the OS's text
          raise OSError(errno.ENOSPC, "No space left on device", path) from e
        raise
    pending = {}
  if write and len(shards) > 1:
    index = {"metadata": {"total_size": sum(size for _, size in sizes)}, "weight_map": file_of}
    files_lib.write_json(os.path.join(directory, INDEX), index)  # after every shard, renamed into place whole
  return names
