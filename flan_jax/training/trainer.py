"""The training loop: the sharded train step (flan_jax.training.step) on the seqio pipeline, with checkpoints.

The train state, the loss and the step are defined in flan_jax.training.step (JAX alone, without TensorFlow)
and re-exported here: `trainer.setup`, `trainer.compile_train_step`, `trainer.TrainState` and the rest.
"""

import contextlib
import errno
import math
import re
import signal
import time
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import optax

from flan_jax import errors, settings, storage
from flan_jax import metrics as metrics_lib
from flan_jax.checkpoints import hf, paths, restore, run_record, store
from flan_jax.data import accounting
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import DiskFullError, StoreUnavailableError, UserError
from flan_jax.model import partitioning
from flan_jax.model.lora import LoraConfig
from flan_jax.model.transformer import ModelConfig, Transformer  # noqa: F401
from flan_jax.text import formats, tokenizers, vocabulary
from flan_jax.text.run import run_text
from flan_jax.training import optimizers, run_lock
from flan_jax.training.step import Setup, TrainState, compile_train_step, cross_entropy, loss_fn, setup, train_step  # noqa: F401


class _StopSignal:
  """Turns SIGTERM into a flag checked at the next step boundary, in a one-process job.

  In a multi-host job SIGTERM is left to JAX's preemption service (jax.distributed installs its handler):
  each host may get the notice at a different step, and the service has them all agree on one step to save
  at (`reached_preemption`), where flags of their own would stop them at different steps and leave the
  others waiting in a collective.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      self.requested = True
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, metrics: Mapping[str, Any], state: Optional[TrainState] = None) -> None:
  """A FloatingPointError naming `step` if its loss or gradient norm is not finite, or, given the `state` about to
  be saved, any of its parameters or optimizer state (an update can overflow while the loss that led to it and
  its gradients are finite: a huge learning rate or weight decay)."""
  if not (math.isfinite(float(metrics["loss"])) and math.isfinite(float(metrics["grad_norm"]))):
    raise FloatingPointError(f"loss or gradient became {float(metrics['loss'])} / {float(metrics['grad_norm'])} "
                             f"at step {step}; the last good checkpoint is kept. Lower the learning rate "
                             "or enable clipping.")
  if state is not None and not bool(_all_finite((state.params, state.opt_state))):
    raise FloatingPointError(f"the parameters or optimizer state became NaN or Inf at step {step} (its loss and "
                             "gradient were finite); the last good checkpoint is kept. Lower the learning rate "
                             "or the weight decay.")


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (one replicated boolean, on every process)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


@gin.configurable
def train(model_dir: Optional[str] = None, *,
          mixture_or_task_name: Optional[str] = None,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          model_config: ModelConfig = gin.REQUIRED,
          mesh: Optional[jax.sharding.Mesh] = None,
          rules: Optional[tuple] = None,
          learning_rate_schedule: Optional[optax.Schedule] = None,
          optimizer: Optional[optax.GradientTransformation] = None,
          checkpoint_period: int = 100,
          checkpoints_to_keep: Optional[int] = 3,
          keep_period: Optional[int] = None,
          initial_checkpoint_path: Optional[str] = None,
          on_damaged_checkpoint: str = "refuse",
          num_microbatches: int = 1,
          z_loss: float = 0.0,
          seed: int = 0,
          log_every: int = 10,
          async_checkpointing: bool = True,
          lora: Optional[LoraConfig] = None) -> TrainState:
  """Trains to `train_steps`, resuming from the newest checkpoint in `model_dir` if there is one.

  The run's gin files bind `mesh`, `rules`, `learning_rate_schedule` and `optimizer` (to
  `@make_mesh()`, `@axis_rules()`, `@make_schedule()` and `@make_optimizer()`), so the operative
  config written to `model_dir` shows them; a Python caller may pass the objects or leave them None
  for those configurables' gin or default settings.

  With `lora` (`@LoraConfig()`, gin/runs/finetune_lora.gin) the base from `initial_checkpoint_path` stays
  frozen and only low-rank adapters are trained; checkpoints hold the adapters and their optimizer state.
  """
  mesh = partitioning.make_mesh() if mesh is None else mesh
  rules = partitioning.axis_rules() if rules is None else rules
  schedule = learning_rate_schedule or optimizers.make_schedule(train_steps)
  tx = optimizer or optimizers.make_optimizer(schedule)
  s = _checked_setup(model_dir, mixture_or_task_name, task_feature_lengths, train_steps, batch_size, model_config,
                     mesh, rules, tx, checkpoint_period, checkpoints_to_keep, keep_period, initial_checkpoint_path,
                     num_microbatches, z_loss, seed, log_every, async_checkpointing, lora)
  seq_len = sum(task_feature_lengths.values())
  vocab = _check_vocab(mixture_or_task_name, model_config, model_dir, initial_checkpoint_path)
  example_format = _check_format(vocab, model_dir)
  base_record = None if lora is None else run_record.check_base(model_dir, initial_checkpoint_path, lora, model_config)

  is_main = jax.process_index() == 0
  storage.makedirs(model_dir)
  progress = {"step": 0, "saving": None}  # where the run is, for the message if the disk fills up
  with contextlib.ExitStack() as stack:
    lock = stack.enter_context(run_lock.hold(model_dir))  # one trainer per MODEL_DIR; kill -9 releases it
    # The vocabulary and format checked above (gin's, else the caller's run_text's, else bytes and 'prompt')
    # are this run's until it returns: its datasets and converters read them, and nothing is left behind.
    stack.enter_context(run_text(vocabulary=vocab, example_format=example_format["format"]))
    stack.enter_context(_naming_a_failed_write(model_dir, progress))
    mngr = stack.enter_context(store.closing(store.manager(
        storage.join(model_dir, paths.SUBDIR), save_every=checkpoint_period, keep=checkpoints_to_keep,
        keep_period=keep_period, async_save=async_checkpointing)))
    if is_main:
      run_record.write_run_record(model_dir, model_config, vocab, example_format)
      if base_record is not None:
        run_record.write_lora_base(model_dir, base_record)
    state = _restore_or_init(mngr, s, model_dir, on_damaged_checkpoint, seed, initial_checkpoint_path, lora, is_main)
    frozen = None if lora is None else _frozen_base(s, initial_checkpoint_path, base_record, is_main)
    start = progress["step"] = int(state.step)

    dropout = model_config.dropout_rate > 0 or (lora is not None and lora.dropout > 0)
    step_fn = compile_train_step(s, tx, schedule, num_microbatches=num_microbatches, z_loss=z_loss,
                                 dropout_seed=seed + 1 if dropout else None)
    inputs, tally = _input_iterator(model_dir, start, mixture_or_task_name, task_feature_lengths, batch_size, seed,
                                    is_main)
    batches = (partitioning.to_global(tally.count(local), s.batch_sharding) for local in inputs)  # counted, untagged
    throughput = metrics_lib.Throughput(train_steps, tokens_per_step=batch_size * seq_len)
    _log(is_main, f"training {mixture_or_task_name}: steps {start} -> {train_steps}, batch {batch_size} x {seq_len} "
         f"tokens, {model_config.num_params():,} parameters, mesh {dict(mesh.shape)}")

    previous = None  # (step, metrics) of the step before: read one step behind, while this one runs
    with _StopSignal() as stop, metrics_lib.MetricsWriter(model_dir, enabled=is_main) as writer:
      for step in range(start + 1, train_steps + 1):  # `step` is the step this iteration completes
        progress["step"] = step
        state, metrics = step_fn(state, next(batches), frozen)
        if previous is not None:
          _report(writer, throughput, *previous, every=log_every)
        previous = (step, metrics)
        if step == start + 1:  # the first step compiles; time from here on
          jax.block_until_ready(metrics)
          throughput.start(step)
          if is_main:
            _write_operative_config(model_dir)
        preempted = stop.requested or (jax.process_count() > 1 and mngr.reached_preemption(step))
        if step % checkpoint_period == 0 or step == train_steps or preempted:
          lock.check()  # a bucket lock taken over by another trainer: stop before writing over its run
          _check_finite(step, jax.device_get(metrics), state)  # only finite states are saved
          store.save(mngr, step, state.params, state.opt_state, force=True)
          inputs.save(step, keep=set(mngr.all_steps()), files=tally.files(step))  # with the tally up to `step`
          run_record.publish_trained_on(model_dir, inputs.path(step, accounting.FILE))  # MODEL_DIR/trained_on.json
          writer.sync()  # the metrics in a bucket reach at least the newest checkpoint
          progress["saving"] = step  # an async save that fails surfaces at a later call
        if preempted:
          writer.log(f"stop requested: saved step {step}; rerun the same command to resume")
          break
      if previous is not None:
        _report(writer, throughput, *previous, every=1)
      mngr.wait_until_finished()
    return state


def _checked_setup(model_dir, mixture_or_task_name, task_feature_lengths, train_steps, batch_size, model_config,
                   mesh, rules, tx, checkpoint_period, checkpoints_to_keep, keep_period, initial_checkpoint_path,
                   num_microbatches, z_loss, seed, log_every, async_checkpointing, lora) -> Setup:
  """Every setting of `train` checked (one line naming the flag to change), then the step's shapes and shardings;
  nothing is written to MODEL_DIR before this returns."""
  if not model_dir:
    raise UserError("MODEL_DIR is not set: pass --gin.MODEL_DIR=/path/to/run (checkpoints and logs go there)")
  storage.check(model_dir, "MODEL_DIR")
  if initial_checkpoint_path:
    storage.check(initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
  store.check_supported(storage.join(model_dir, paths.SUBDIR))  # s3://: one line before anything is written
  storage.check_reachable(model_dir, "MODEL_DIR")  # a bucket missing or out of reach: one line, on every host
  data_lib.check_task_name(mixture_or_task_name)
  if not (isinstance(task_feature_lengths, Mapping) and set(task_feature_lengths) == {"inputs", "targets"}):
    raise UserError(f"TASK_FEATURE_LENGTHS={task_feature_lengths!r} is not a dict of 'inputs' and 'targets' "
                    "lengths; pass --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 128, 'targets': 32}\"")
  _check_settings(task_feature_lengths, train_steps, batch_size, checkpoint_period, checkpoints_to_keep, keep_period,
                  num_microbatches, z_loss, seed, log_every, async_checkpointing)
  s = setup(model_config, mesh, rules, tx, sum(task_feature_lengths.values()), lora)
  if batch_size % partitioning.data_parallel_size(mesh, rules) or batch_size % num_microbatches:
    raise UserError(f"BATCH_SIZE={batch_size} must divide by the data-parallel size "
                    f"{partitioning.data_parallel_size(mesh, rules)} and by num_microbatches={num_microbatches}")
  if paths.is_pretrained(initial_checkpoint_path):  # before anything is written to MODEL_DIR
    hf.check_config(model_config, restore.pretrained_model_config(initial_checkpoint_path), initial_checkpoint_path)
  return s


def _restore_or_init(mngr, s: Setup, model_dir: str, on_damaged_checkpoint: str, seed: int,
                     initial_checkpoint_path: Optional[str], lora: Optional[LoraConfig], is_main: bool) -> TrainState:
  """The newest good checkpoint in MODEL_DIR; else a fresh state, with a full fine-tuning run's parameters
  from INITIAL_CHECKPOINT_PATH (a LoRA run's base is frozen apart: _frozen_base)."""
  restored = store.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs, on_damaged_checkpoint)
  if restored:
    step, params, opt_state = restored
    _log(is_main, f"resumed from step {step} in {model_dir}")
    return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), s.state_shardings.step), params=params,
                      opt_state=opt_state)
  state = s.init(jax.random.key(seed))
  if initial_checkpoint_path and lora is None:
    began = time.time()
    loaded_step, params = restore.restore_params(initial_checkpoint_path, s.model.config, s.mesh, s.rules,
                                                 s.sharded_param_structs)
    state = state.replace(params=params)
    _log(is_main, f"initialised parameters from {initial_checkpoint_path} (step {loaded_step}) in "
         f"{time.time() - began:.1f}s; peak host memory {restore.peak_host_memory_gib():.2f} GiB")
  return state


def _frozen_base(s: Setup, initial_checkpoint_path: str, base_record: dict, is_main: bool):
  """A LoRA run's frozen base, read again at every start (checked against the run's record), on the mesh."""
  began = time.time()
  lora = s.model.lora
  frozen = restore.load_frozen(initial_checkpoint_path, s.model.config, lora, s.mesh, s.rules, s.sharded_frozen_structs)
  _log(is_main, f"froze the base {base_record['path']} ({lora.base_quantization} weights) in "
       f"{time.time() - began:.1f}s; training rank-{lora.rank} adapters on {', '.join(lora.targets)} "
       f"({sum(x.size for x in jax.tree.leaves(s.state_shapes.params)):,} parameters)")
  return frozen


def _check_settings(task_feature_lengths, train_steps, batch_size, checkpoint_period, checkpoints_to_keep,
                    keep_period, num_microbatches, z_loss, seed, log_every, async_checkpointing) -> None:
  """Refuses a wrong type or value of a numeric setting of `train` in one line, before anything compiles."""
  settings.feature_lengths("TASK_FEATURE_LENGTHS", task_feature_lengths)
  settings.integer("TRAIN_STEPS", train_steps)
  settings.integer("BATCH_SIZE", batch_size)
  settings.integer("CHECKPOINT_PERIOD", checkpoint_period)
  settings.integer("CHECKPOINTS_TO_KEEP", checkpoints_to_keep, allow_none=True)
  settings.integer("KEEP_PERIOD", keep_period, allow_none=True)
  settings.integer("train.num_microbatches", num_microbatches)
  settings.number("train.z_loss", z_loss, low=0)
  settings.integer("train.seed", seed, minimum=0)
  settings.integer("train.log_every", log_every)
  settings.boolean("train.async_checkpointing", async_checkpointing)


def _input_iterator(model_dir: str, start: int, name: str, lengths: Mapping[str, int], batch_size: int,
                    seed: int, is_main: bool) -> tuple[data_lib.InputIterator, accounting.Tally]:
  """The training batches from step `start` on, tagged with each token's task, and the tally of those
  before, from the newest input position saved with a tally at or before `start` (that of `start`, or of an
  earlier kept step when its own was not written), then reading and counting the batches up to `start`.

  A position saved with another BATCH_SIZE, TASK_FEATURE_LENGTHS or number of processes cannot continue this
  pipeline: the run goes on from its checkpoint with the data read again from its beginning as from that step,
  and says so in one line (the examples of the steps before it come again). With no position at all (a run
  saved without them, also older runs, whose positions are of untagged batches): by reading and counting
  `start` batches (exact, but O(start))."""
  directory = storage.join(model_dir, paths.INPUT_POSITIONS)
  settings = data_lib.position_settings(batch_size, lengths)
  new_inputs = lambda: data_lib.InputIterator(
      data_lib.get_dataset(name, lengths, "train", batch_size, seed=seed, with_task_index=True), directory, settings)
  inputs, tally = new_inputs(), accounting.Tally(name)
  if start == 0:
    return inputs, tally
  for step in (s for s in inputs.saved_steps() if s <= start):
    if not tally.load(inputs.path(step, accounting.LOCAL_FILE)):  # no position, or one cut short
      continue
    saved = inputs.saved_settings(step)
    if saved is None or saved == settings:
      if not inputs.restore(step):
        continue
      if inputs.fits():
        if step < start:
          _log(is_main, f"no saved input position for step {start}: restored step {step}'s and read "
               f"{start - step} batch{'es' if start - step > 1 else ''} to reach it")
        break
      inputs = new_inputs()  # an older run's position of other batches (it recorded no settings)
    _log(is_main, _data_restart(step, start, saved, settings))
    break
  else:
    _log(is_main, f"no saved input position for step {start}: reading {start} batches to reach it")
    step, tally = 0, accounting.Tally(name)
  for _ in range(start - step):
    tally.count(next(inputs))
  return inputs, tally


def _data_restart(step: int, start: int, saved: Optional[dict], settings: dict) -> str:
  """The line saying the input position of `step` does not fit this run, and what the run does instead."""
  def named(values: dict, keys) -> str:
    names = {"batch_size": "BATCH_SIZE={}", "task_feature_lengths": "TASK_FEATURE_LENGTHS={}",
             "processes": "{} processes"}
    return " and ".join(names[k].format(values.get(k)) for k in keys)
  if saved is None:
    why = (f"does not fit this run's batches (saved with another BATCH_SIZE or TASK_FEATURE_LENGTHS than "
           f"{named(settings, ('batch_size', 'task_feature_lengths'))})")
    rerun = "the earlier settings"
  else:
    changed = [k for k in settings if saved.get(k) != settings[k]]
    why = f"was saved with {named(saved, changed)}, and this run has {named(settings, changed)}"
    rerun = named(saved, changed)
  reach = f" (reading {start - step} batches to reach step {start})" if start > step else ""
  return (f"the input position of step {step} {why}: the training data starts again from its beginning at step "
          f"{step}, so examples of the steps before it are trained on again{reach}; rerun with {rerun} to "
          "continue the data where it stopped")


@contextlib.contextmanager
def _naming_a_failed_write(model_dir: str, progress: Mapping[str, Optional[int]]):
  """Turns a write that failed for lack of space (a checkpoint, an input position, the metrics) into
  one DiskFullError, and a bucket that stopped answering into one StoreUnavailableError."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  (orbax and tensorstore wrap the OSError in their own types)
    if storage.is_remote(model_dir) and (reason := storage.unavailable(e)) is not None:
      raise StoreUnavailableError(
          f"{model_dir} stopped answering at step {progress['step']} ({reason[:200]}); the checkpoints complete "
          "there before then are intact: rerun the same command when the bucket answers again") from e
    if not _is_disk_full(e):
      raise
    directory = storage.join(model_dir, paths.SUBDIR)
    complete = sorted(int(d) for d in storage.listdir(directory) if d.isdigit()) if storage.isdir(directory) else []
    # What was being written: the error names orbax's or the input position's temporary directory.
    text = _chain_text(e)
    checkpoint = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
    position = re.search(re.escape(paths.INPUT_POSITIONS) + r"/process_\d+/(\d+)\.tmp", text)
    if checkpoint or (progress["saving"] and not position):
      saving = f" while writing checkpoint {checkpoint.group(1) if checkpoint else progress['saving']}"
    else:
      saving = f" while writing the input position of step {position.group(1)}" if position else ""
    last = f"the last complete checkpoint is step {complete[-1]}" if complete else "no checkpoint is complete yet"
    raise DiskFullError(f"no space left on device in {model_dir} at step {progress['step']}{saving}; {last}. "
                        "Free some space and rerun the same command to resume") from e


def _is_disk_full(e: BaseException) -> bool:
  return "No space left on device" in _chain_text(e) or any(
      getattr(x, "errno", None) == errno.ENOSPC for x in errors.chain(e))


def _chain_text(e: BaseException) -> str:
  return "\n".join(str(x) for x in errors.chain(e))


def _report(writer: metrics_lib.MetricsWriter, throughput: metrics_lib.Throughput, step: int,
            metrics: Mapping[str, Any], every: int) -> None:
  """Checks a finished step's metrics; writes them every `every` steps and at the last step."""
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  _check_finite(step, metrics)
  if step % every == 0 or step == throughput.total_steps:
    writer.write_train_step(step, metrics, throughput)


def _log(is_main: bool, message: str) -> None:
  if is_main:
    print(message, flush=True)


def _write_operative_config(model_dir: str) -> None:
  storage.write_text(storage.join(model_dir, "config.gin"), gin.operative_config_str())


def _check_format(vocab, model_dir: str) -> dict:
  """The record of the run's example format, after checking it is the one the run so far used."""
  current = formats.describe(formats.example_format(), vocab)
  recorded = run_record.recorded_format(model_dir)
  if recorded is not None:
    formats.check_same(recorded, current, model_dir)
  return current


def _check_vocab(name: str, config: ModelConfig, model_dir: str, initial_checkpoint_path: Optional[str]):
  """The run's vocabulary, after checking it fits the model, the run so far and the starting point."""
  vocab = data_lib.vocabulary(name)
  if vocab.vocab_size > config.vocab_size:
    raise UserError(f"the model's vocab_size={config.vocab_size} is smaller than the vocabulary of "
                    f"'{name}' ({vocab.vocab_size}); set ModelConfig.vocab_size >= {vocab.vocab_size}")
  recorded = run_record.recorded_vocabulary(model_dir)
  if recorded is not None:
    tokenizers.check_same(tokenizers.describe(recorded), vocab, model_dir)
  # A pretrained model without a tokenizer is refused unless the run chose its vocabulary itself.
  start = (restore.starting_vocabulary(initial_checkpoint_path, missing_ok=vocabulary.is_chosen())
           if initial_checkpoint_path else None)
  if start is not None:
    tokenizers.check_same(tokenizers.describe(start), vocab, initial_checkpoint_path)
  return vocab
