"""Zero-shot evaluation: restore parameters, run seqio.Evaluator, aggregate, write JSON, print a table.

Metrics that need scores get each target's log-likelihood (rank classification over the
options); metrics that need predictions get greedy decodes. This module restores a checkpoint on
its own and never imports the trainer.
"""

import functools
import json
import os
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax import checkpointing
from flan_jax import data as data_lib
from flan_jax import decoding
from flan_jax import partitioning
from flan_jax import pretrained
from flan_jax import vocabularies
from flan_jax.errors import UserError
from flan_jax.model import ModelConfig, Transformer


def abstract_params(model: Transformer, mesh, rules, seq_len: int = 8):
  """Parameter shapes with their shardings, without allocating them."""
  init = lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
  return partitioning.with_shardings(*partitioning.abstract_params(init, mesh, rules))


class _BatchRunner:
  """Feeds an enumerated eval dataset through a jitted function in fixed-size global batches."""

  def __init__(self, fn, params, mesh, rules, batch_size: int):
    self.params, self.mesh, self.rules, self.batch_size = params, mesh, rules, batch_size
    self.sharding = partitioning.batch_sharding(mesh, rules)
    self.fn = jax.jit(fn, out_shardings=partitioning.replicated(mesh))

  def __call__(self, ds) -> list[tuple[int, Any]]:
    results = []
    for indices, features in ds.batch(self.batch_size).as_numpy_iterator():
      n = len(indices)
      batch = {k: self._to_global(_pad(v, self.batch_size)) for k, v in features.items()}
      with partitioning.activate(self.mesh, self.rules):
        out = np.asarray(self.fn(self.params, batch))[:n]
      results.extend(zip(indices.tolist(), out))
    return results

  def _to_global(self, rows: np.ndarray) -> jax.Array:
    # Every process holds the whole batch; each device takes its slice of it.
    return jax.make_array_from_callback(rows.shape, self.sharding, lambda idx: rows[idx])


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)]) if len(rows) < size else rows


@gin.configurable
def evaluate(checkpoint_path: Optional[str] = None, *,
             mixture_or_task_name: Optional[str] = None,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             model_config: Optional[ModelConfig] = None,
             split: str = "validation",
             batch_size: int = 32,
             num_examples: Optional[int] = None,
             output_dir: Optional[str] = None,
             mesh: Optional[jax.sharding.Mesh] = None,
             rules: Optional[tuple] = None) -> dict:
  """Evaluates a checkpoint zero-shot on every task of a task or mixture; returns the report.

  `checkpoint_path` is a flan_jax run (its newest step), one step of it, a Hugging Face model
  directory or a GGUF file. The model config and the vocabulary follow the checkpoint unless the
  gin config sets them (then they must match it).
  """
  if not checkpoint_path:
    raise UserError("CHECKPOINT_PATH is not set: pass --gin.CHECKPOINT_PATH=<model dir> or <model dir>/<step>")
  data_lib.check_task_name(mixture_or_task_name)
  mesh = partitioning.make_mesh() if mesh is None else mesh
  rules = partitioning.axis_rules() if rules is None else rules
  if batch_size % partitioning.data_parallel_size(mesh, rules):
    raise UserError(f"eval batch_size={batch_size} must divide by the data-parallel size "
                    f"{partitioning.data_parallel_size(mesh, rules)}")
  is_pretrained = pretrained.is_pretrained(checkpoint_path)
  if is_pretrained and not output_dir:
    raise UserError(f"{checkpoint_path} is a pretrained model: set EVAL_OUTPUT_DIR for the eval results")
  model_dir = checkpointing.model_dir_of(checkpoint_path)
  if model_config is None:
    model_config = (pretrained.pretrained_model_config(checkpoint_path) if is_pretrained
                    else checkpointing.recorded_model_config(model_dir) or ModelConfig())
  _follow_vocabulary(mixture_or_task_name, checkpoint_path)
  model = Transformer(model_config)
  step, params = pretrained.restore_params(checkpoint_path, model_config, mesh, rules,
                                           abstract_params(model, mesh, rules))

  vocab = data_lib.vocabulary(mixture_or_task_name)
  evaluator = seqio.Evaluator(
      mixture_or_task_name, feature_converter=data_lib.feature_converter(pack=False, vocab=vocab),
      eval_split=split, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
      use_cached=False, async_compute_metrics=False)
  predict = _BatchRunner(functools.partial(
      decoding.greedy_decode, model, max_decode_length=task_feature_lengths["targets"],
      eos_id=vocab.eos_id, vocab_size=vocab.vocab_size), params, mesh, rules, batch_size)
  score = _BatchRunner(functools.partial(decoding.score_targets, model), params, mesh, rules, batch_size)
  future, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict, score_fn=score)

  metrics = {task: {name: float(_value(v)) for name, v in values.items()}
             for task, values in future.result().items()}
  report = {"checkpoint_path": os.path.abspath(checkpoint_path), "step": step,
            "mixture_or_task_name": mixture_or_task_name, "split": split,
            "metrics": metrics, "average": average(metrics)}
  output_dir = output_dir or model_dir
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"eval_{mixture_or_task_name}_step{step}.json")
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    print(format_table(report), flush=True)
    print(f"wrote {path}", flush=True)
  return report


def _follow_vocabulary(name: str, checkpoint_path: str) -> None:
  """Tokenize with the checkpoint's vocabulary; one chosen in gin must be the same one."""
  start = pretrained.starting_vocabulary(checkpoint_path)
  if start is None:
    return
  if not vocabularies.is_configured():
    vocabularies.set_default(start)
  vocabularies.check_same(vocabularies.describe(start), data_lib.vocabulary(name), checkpoint_path)


def _value(v) -> float:
  return getattr(v, "value", v)


def average(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """The mean of each metric over the tasks that report it."""
  names = sorted({name for values in metrics.values() for name in values})
  return {name: float(np.mean([v[name] for v in metrics.values() if name in v])) for name in names}


def format_table(report: Mapping[str, Any]) -> str:
  rows = [(task, name, value) for task, values in sorted(report["metrics"].items())
          for name, value in sorted(values.items())]
  rows += [("average", name, value) for name, value in report["average"].items()]
  width = max([len(r[0]) for r in rows] + [4])
  mwidth = max([len(r[1]) for r in rows] + [6])
  lines = [f"{report['mixture_or_task_name']} @ step {report['step']} ({report['split']})",
           f"{'task':<{width}}  {'metric':<{mwidth}}  value", f"{'-' * width}  {'-' * mwidth}  -------"]
  lines += [f"{t:<{width}}  {m:<{mwidth}}  {v:7.2f}" for t, m, v in rows]
  return "\n".join(lines)
