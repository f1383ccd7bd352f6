"""Metrics by step: JSONL lines and TensorBoard events in MODEL_DIR, the progress line, the ETA.

Only process 0 writes; on the other processes the writer does nothing. With MODEL_DIR in a bucket both
are written to a local scratch folder and uploaded (flan_jax.storage) at each write: an object store
cannot append, and TensorBoard's writer would reach a bucket through TensorFlow's own client.
"""

import json
import os
import shutil
import tempfile
import time
from typing import Callable, Mapping, Optional

import tensorflow as tf

from flan_jax import storage


def format_eta(seconds: float) -> str:
  """`1h05m` from an hour on, `4m07s` below it."""
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Throughput:
  """Training speed since a start step, and the time left at that speed."""

  def __init__(self, total_steps: int, tokens_per_step: int, clock: Callable[[], float] = time.monotonic):
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self._clock = clock
    self._start_time: Optional[float] = None
    self._start_step = 0

  def start(self, step: int) -> None:
    """Times from now on; `step` is the last step already done (the one that compiled)."""
    self._start_time, self._start_step = self._clock(), step

  def measure(self, step: int) -> tuple[float, str]:
    """(tokens per second, ETA) once `step` is done; (0.0, "?") until a timed step is."""
    done = step - self._start_step
    if self._start_time is None or done <= 0:
      return 0.0, "?"
    elapsed = self._clock() - self._start_time
    if elapsed <= 0:
      return 0.0, "?"
    rate = done / elapsed
    return rate * self.tokens_per_step, format_eta((self.total_steps - step) / rate)


class MetricsWriter:
  """Writes scalars by step to MODEL_DIR/{name}_metrics.jsonl and MODEL_DIR/tensorboard/{name}.

  `enabled` is true on process 0 only: a disabled writer writes and prints nothing. For a MODEL_DIR in a bucket
  both are written to local scratch and uploaded at most every `push_seconds` (an upload per logged step would
  hold the train loop up for as long as the store takes to answer), at each `sync()` (the trainer's checkpoint
  saves) and when the writer closes.
  """

  def __init__(self, model_dir: str, *, enabled: bool, name: str = "train", push_seconds: float = 30.0):
    self.enabled, self.push_seconds = enabled, push_seconds
    self._pushed_at = time.monotonic()
    self._jsonl = None
    self._summary = None
    self._upload = None  # (local scratch, MODEL_DIR in a bucket, name)
    if enabled:
      local = model_dir
      if storage.is_remote(model_dir):
        local = tempfile.mkdtemp(prefix="flan_jax_metrics_")
        self._upload = (local, model_dir, name)
        jsonl = storage.join(model_dir, f"{name}_metrics.jsonl")
        if storage.exists(jsonl):  # a resumed run appends to the lines so far
          storage.copy_to_local(jsonl, os.path.join(local, f"{name}_metrics.jsonl"))
      self._jsonl = open(os.path.join(local, f"{name}_metrics.jsonl"), "a")
      # tf.summary directly: clu's writer would import TensorBoard's hparams plugin, and with it all of Keras.
      self._summary = tf.summary.create_file_writer(os.path.join(local, "tensorboard", name))

  def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    """One JSONL line (the scalars, then `step`) and one TensorBoard point per scalar."""
    if not self.enabled:
      return
    scalars = {f"{prefix}/{k}" if prefix else k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({**scalars, "step": step}) + "\n")
    self._jsonl.flush()
    with self._summary.as_default():
      for tag, value in scalars.items():
        tf.summary.scalar(tag, value, step=step)
    self._summary.flush()
    if time.monotonic() - self._pushed_at >= self.push_seconds:
      self._push()

  def sync(self) -> None:
    """Uploads what was written so far to a MODEL_DIR in a bucket now."""
    if self.enabled and not self._jsonl.closed:
      self._push()

  def _push(self) -> None:
    """Uploads the JSONL file and the event files written so far to MODEL_DIR in a bucket."""
    self._pushed_at = time.monotonic()
    if self._upload is not None:
      local, model_dir, name = self._upload
      jsonl = f"{name}_metrics.jsonl"
      storage.copy_local_to(os.path.join(local, jsonl), storage.join(model_dir, jsonl))
      storage.copy_local_to(os.path.join(local, "tensorboard", name), storage.join(model_dir, "tensorboard", name))

  def write_train_step(self, step: int, scalars: Mapping[str, float], throughput: Throughput) -> None:
    """Writes a train step's scalars with its tokens per second, and prints the progress line."""
    if not self.enabled:
      return
    tokens_per_second, eta = throughput.measure(step)
    self.write_scalars(step, {**scalars, "tokens_per_second": tokens_per_second})
    self.log(f"step {step}/{throughput.total_steps} | loss {scalars['loss']:.4f} | "
             f"acc {scalars['accuracy']:.3f} | lr {scalars['learning_rate']:.2e} | "
             f"{tokens_per_second:,.0f} tok/s | ETA {eta}")

  def log(self, message: str) -> None:
    if self.enabled:
      print(message, flush=True)

  def close(self, push: bool = True) -> None:
    """Flushes and closes both files (and uploads them, unless `push` is false); closing twice is harmless."""
    if self.enabled and not self._jsonl.closed:
      self._jsonl.close()
      self._summary.close()
      if push:
        self._push()
      if self._upload is not None:
        shutil.rmtree(self._upload[0], ignore_errors=True)

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, kind, value, tb) -> None:
    self.close(push=value is None or storage.unavailable(value) is None)  # not into a store that stopped answering
