"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume, restore params.

A checkpoint directory (MODEL_DIR/checkpoints, paths.SUBDIR) holds one sub-directory per step with two
items, `params` and `opt_state`, so evaluation and fine-tuning starts can restore parameters alone. What
a run records beside them (model config, vocabulary, format, LoRA base) is run_record.py's. Orbax writes
each step to a temporary directory and renames it when complete, so a crash mid-save never
touches the last complete checkpoint. A step that fails to restore (damaged on disk) stops the
run with a message, or is set aside on request; it is never silently skipped.

The directory may be in a bucket (flan_jax.storage): orbax then writes each step in place and marks it
complete with a commit file, its own protocol for object stores, and a damaged step is set aside by
copying its objects to `<step>.damaged`.
"""

import contextlib
import logging
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from flan_jax import startup, storage
from flan_jax.checkpoints import paths
from flan_jax.errors import UserError, first_line

PARAMS, OPT_STATE = "params", "opt_state"


def manager(directory: str, *, save_every: int = 1, keep: Optional[int] = None,
            keep_period: Optional[int] = None, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  check_supported(directory)
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_period,
      enable_async_checkpointing=async_save, create=create,
      cleanup_tmp_directories=create)  # a save cut short (kill, full disk) leaves nothing in the way
  return ocp.CheckpointManager(storage.as_epath(directory), options=options)


def check_supported(directory: str) -> None:
  """A UserError for a checkpoint directory orbax cannot write: s3:// (orbax builds tensorstore specs only for
  local paths and gs://, and would drop the sharding files into a local folder named `s3:`)."""
  if storage.scheme(directory) == "s3":
    raise UserError(f"checkpoints cannot be kept in {storage.dirname(directory)} yet: orbax-checkpoint "
                    f"{ocp.__version__} writes them only to a local disk or gs://; keep MODEL_DIR there (eval "
                    "results and exports may still go to s3://)")


@contextlib.contextmanager
def closing(mngr: ocp.CheckpointManager):
  """Closes the manager after the block (waiting for its saves). After a failure it closes with
  stderr muted: orbax's background threads print tracebacks of the error being raised anyway."""
  try:
    yield mngr
  except BaseException:
    with startup.stderr_muted(), contextlib.suppress(Exception):
      mngr.close()
    raise
  mngr.close()


def save(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any, force: bool = False) -> bool:
  """Starts a save of `step` if the interval says so (or `force`); returns whether it did."""
  return mngr.save(step, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(params), OPT_STATE: ocp.args.StandardSave(opt_state)}), force=force)


DAMAGED_POLICIES = ("refuse", "set_aside")


def restore_latest(mngr: ocp.CheckpointManager, param_structs: Any, opt_state_structs: Any,
                   on_damaged: str = "refuse") -> Optional[tuple[int, Any, Any]]:
  """(step, params, opt_state) of the newest checkpoint, or None if the run has none yet.

  A checkpoint that fails to restore is damaged. With `on_damaged="refuse"` any damaged step newer
  than the one to resume from is a UserError naming the steps (a run never quietly goes back, or
  starts again from scratch, over checkpoints it cannot read). With "set_aside" the damaged steps
  are renamed to `<step>.damaged` (orbax no longer sees them) and the newest good one is used, or
  none: then the run starts from step 0.
  """
  if on_damaged not in DAMAGED_POLICIES:
    raise UserError(f"on_damaged_checkpoint={on_damaged!r} is not one of {DAMAGED_POLICIES}")
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    check_shapes(mngr, step, param_structs)
    try:
      out = mngr.restore(step, args=ocp.args.Composite(**{
          PARAMS: ocp.args.StandardRestore(param_structs),
          OPT_STATE: ocp.args.StandardRestore(opt_state_structs)}))
    except Exception as e:  # truncated or missing files: orbax cannot read the step
      damaged.append((step, f"{type(e).__name__}: {first_line(e)[:120]}"))
      continue
    _handle_damaged(mngr, damaged, on_damaged, resume_step=step)
    return step, out[PARAMS], out[OPT_STATE]
  _handle_damaged(mngr, damaged, on_damaged, resume_step=None)
  return None


def _handle_damaged(mngr: ocp.CheckpointManager, damaged: list, on_damaged: str,
                    resume_step: Optional[int]) -> None:
  if not damaged:
    return
  steps = [step for step, _ in damaged]
  then = f"resume from step {resume_step}" if resume_step is not None else "start again from step 0"
  if on_damaged == "refuse":
    raise UserError(
        f"checkpoint step(s) {steps} in {mngr.directory} cannot be restored ({damaged[0][1]}); move them "
        f"aside, or rerun with --gin.train.on_damaged_checkpoint=set_aside to rename them to "
        f"<step>.damaged and {then}")
  if jax.process_index() == 0:
    for step in steps:
      storage.rename(storage.join(str(mngr.directory), str(step)), storage.join(str(mngr.directory), f"{step}.damaged"))
  _sync("flan_jax_set_aside_damaged")
  mngr.reload()
  if jax.process_index() == 0:
    print(f"set aside damaged checkpoint step(s) {steps} in {mngr.directory} as <step>.damaged; {then}",
          flush=True)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def check_shapes(mngr: ocp.CheckpointManager, step: int, param_structs: Any) -> None:
  """Raises UserError listing missing, unexpected and wrongly shaped parameters."""
  checkpointer = ocp.StandardCheckpointer()
  try:  # read with the params item's own handler (the manager's metadata is None before a restore)
    saved = checkpointer.metadata(storage.join(str(mngr.directory), str(step), PARAMS)).item_metadata
  except Exception:  # unreadable metadata: a damaged step, for restore() to report
    return
  finally:
    checkpointer.close()
  if saved is None:
    return
  want = {_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(param_structs)}
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


def restore_params(path: str, param_structs: Any) -> tuple[int, Any]:
  """Parameters alone (no optimizer state) from a model dir (its newest step) or a step dir.

  `path` may be MODEL_DIR, MODEL_DIR/checkpoints, or MODEL_DIR/checkpoints/<step>.
  """
  path = storage.absolute(path)
  if not storage.isdir(path):
    raise UserError(f"checkpoint path {path} does not exist; pass CHECKPOINT_PATH=<model dir> "
                    f"or <model dir>/{paths.SUBDIR}/<step>")
  directory, step = path, None
  if storage.isdir(storage.join(path, paths.SUBDIR)):
    directory = storage.join(path, paths.SUBDIR)
  elif storage.basename(path).isdigit() and storage.isdir(storage.join(path, PARAMS)):
    directory, step = storage.dirname(path), int(storage.basename(path))
  if storage.is_remote(path):  # orbax lists through a cache: a step saved since an earlier restore would be missed
    storage.forget(path)
    storage.forget(directory)
  mngr = manager(directory, async_save=False, create=False)
  steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise UserError(f"no checkpoint found in {path}; pass CHECKPOINT_PATH=<model dir> or "
                    f"<model dir>/{paths.SUBDIR}/<step> of a training run")
  errors = []
  for candidate in steps:
    check_shapes(mngr, candidate, param_structs)
    try:
      out = mngr.restore(candidate, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(param_structs)}))
      return candidate, out[PARAMS]
    except Exception as e:
      logging.warning("checkpoint %s/%d cannot be restored: %s", directory, candidate, e)
      errors.append(f"{candidate}: {type(e).__name__}")
  raise UserError(f"no checkpoint in {path} could be restored ({', '.join(errors)})")
