"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume, restore params.

A checkpoint directory holds one sub-directory per step with two items, `params` and
`opt_state`, so evaluation and fine-tuning starts can restore parameters alone. Beside them a run
records its model config (model_config.json) and vocabulary (vocabulary/), so eval, resume and
export follow the run without being told its model or tokenizer again. Orbax writes
each step to a temporary directory and renames it when complete, so a crash mid-save never
touches the last complete checkpoint; a complete one that fails to restore is skipped.
"""

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from flan_jax import vocabularies
from flan_jax.errors import UserError
from flan_jax.model import ModelConfig

PARAMS, OPT_STATE = "params", "opt_state"
SUBDIR = "checkpoints"  # where a run keeps them inside MODEL_DIR
MODEL_CONFIG = "model_config.json"
VOCABULARY = "vocabulary"


def model_dir_of(path: str) -> str:
  """MODEL_DIR of MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    path = os.path.dirname(path)
  return os.path.dirname(path) if os.path.basename(path) == SUBDIR else path


def write_run_record(model_dir: str, config: ModelConfig, vocab) -> None:
  """Records the model config and the vocabulary (with its tokenizer file) in MODEL_DIR."""
  with open(os.path.join(model_dir, MODEL_CONFIG + ".tmp"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  os.replace(os.path.join(model_dir, MODEL_CONFIG + ".tmp"), os.path.join(model_dir, MODEL_CONFIG))
  vocabularies.save(vocab, os.path.join(model_dir, VOCABULARY))


def recorded_model_config(model_dir: str) -> Optional[ModelConfig]:
  path = os.path.join(model_dir, MODEL_CONFIG)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return ModelConfig(**json.load(f))


def recorded_vocabulary(model_dir: str):
  """The vocabulary a run recorded, or None (runs from before the record existed)."""
  directory = os.path.join(model_dir, VOCABULARY)
  return vocabularies.load(directory) if os.path.isdir(directory) else None


def manager(directory: str, *, save_every: int = 1, keep: Optional[int] = None,
            keep_period: Optional[int] = None, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_period,
      enable_async_checkpointing=async_save, create=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any, force: bool = False) -> bool:
  """Starts a save of `step` if the interval says so (or `force`); returns whether it did."""
  return mngr.save(step, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(params), OPT_STATE: ocp.args.StandardSave(opt_state)}), force=force)


def restore_latest(mngr: ocp.CheckpointManager, abstract_params: Any,
                   abstract_opt_state: Any) -> Optional[tuple[int, Any, Any]]:
  """(step, params, opt_state) of the newest checkpoint that restores, or None if there is none."""
  for step in sorted(mngr.all_steps(), reverse=True):
    check_shapes(mngr, step, abstract_params)
    try:
      out = mngr.restore(step, args=ocp.args.Composite(**{
          PARAMS: ocp.args.StandardRestore(abstract_params),
          OPT_STATE: ocp.args.StandardRestore(abstract_opt_state)}))
    except Exception as e:  # a damaged checkpoint: fall back to the one before it
      logging.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying an older one",
                      step, mngr.directory, type(e).__name__, str(e).splitlines()[0][:200])
      continue
    return step, out[PARAMS], out[OPT_STATE]
  return None


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_params: Any) -> None:
  """Raises UserError listing missing, unexpected and wrongly shaped parameters."""
  try:
    saved = mngr.item_metadata(step)[PARAMS]
  except Exception:  # unreadable metadata: leave the verdict to restore()
    return
  if saved is None:
    return
  want = {_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
  have = {_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved)}
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  shapes = sorted(f"{k} {have[k]} vs model {want[k]}" for k in set(want) & set(have) if want[k] != have[k])
  if missing or extra or shapes:
    parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
             f"wrong shape {shapes}" if shapes else ""]
    raise UserError(f"checkpoint {mngr.directory}/{step} does not match the model config: "
                    + "; ".join(p for p in parts if p) + " (is the right gin/models/*.gin included?)")


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def restore_params(path: str, abstract_params: Any) -> tuple[int, Any]:
  """Parameters alone (no optimizer state) from a model dir (its newest step) or a step dir.

  `path` may be MODEL_DIR, MODEL_DIR/checkpoints, or MODEL_DIR/checkpoints/<step>.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f"checkpoint path {path} does not exist; pass CHECKPOINT_PATH=<model dir> "
                    f"or <model dir>/{SUBDIR}/<step>")
  directory, step = path, None
  if os.path.isdir(os.path.join(path, SUBDIR)):
    directory = os.path.join(path, SUBDIR)
  elif os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, PARAMS)):
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  mngr = manager(directory, async_save=False, create=False)
  steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise UserError(f"no checkpoint found in {path}; pass CHECKPOINT_PATH=<model dir> or "
                    f"<model dir>/{SUBDIR}/<step> of a training run")
  errors = []
  for candidate in steps:
    check_shapes(mngr, candidate, abstract_params)
    try:
      out = mngr.restore(candidate, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params)}))
      return candidate, out[PARAMS]
    except Exception as e:
      logging.warning("checkpoint %s/%d cannot be restored: %s", directory, candidate, e)
      errors.append(f"{candidate}: {type(e).__name__}")
  raise UserError(f"no checkpoint in {path} could be restored ({', '.join(errors)})")
