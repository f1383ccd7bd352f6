"""The train state, the loss, the sharded train step, and the loop that runs them with checkpoints.

The step is compiled once with `jax.jit` and explicit in/out shardings over the mesh (the pjit
pattern): parameters and optimizer state are placed by the logical-axis rules, batches are split
over the data axes, and XLA inserts the collectives.
"""

import contextlib
import dataclasses
import errno
import functools
import math
import os
import re
import signal
import time
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from flan_jax import accounting, checkpointing, errors, optimizers, partitioning, pretrained, run_lock, vocabularies
from flan_jax import data as data_lib
from flan_jax import metrics as metrics_lib
from flan_jax.errors import DiskFullError, UserError
from flan_jax.model import ModelConfig, Transformer, apply_to_features


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sums over weighted tokens: (loss, weight, correct). logits [b, t, v] float32."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  loss = log_z - target_logit + z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights), jnp.sum(correct * weights)


def loss_fn(params, batch, *, model: Transformer, z_loss: float, dropout_rng: Optional[jax.Array]):
  """Summed loss over target tokens, and (weight, correct) for normalising and metrics."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
  logits = apply_to_features(model, params, batch, deterministic=dropout_rng is None, rngs=rngs)
  loss, weight, correct = cross_entropy(logits, batch["decoder_target_tokens"],
                                        batch["decoder_loss_weights"], z_loss)
  return loss, (weight, correct)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: Transformer,
               tx: optax.GradientTransformation, schedule: optax.Schedule, num_microbatches: int = 1,
               z_loss: float = 0.0, dropout_seed: Optional[int] = None) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch, accumulating gradients over microbatches.

  Gradients are of the summed token loss and are divided by the total number of target tokens
  at the end, so k microbatches give the same update as one batch k times larger.
  """
  dropout_rng = None
  if dropout_seed is not None:
    dropout_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro(i, mb):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
    (loss, (weight, correct)), grads = grad_fn(state.params, mb, model=model, z_loss=z_loss, dropout_rng=rng)
    return grads, jnp.stack([loss, weight, correct])

  if num_microbatches == 1:
    grads, sums = micro(0, batch)
  else:
    # Microbatch i takes rows i, i+k, i+2k, ...: every microbatch draws from every data shard.
    split = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:]), 0, 1),
        dict(batch))

    def body(carry, inputs):
      grads, sums = micro(*inputs)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(3, jnp.float32))
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), split))

  loss, weight, correct = sums[0], jnp.maximum(sums[1], 1.0), sums[2]
  grads = jax.tree.map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss / weight, "accuracy": correct / weight, "learning_rate": schedule(state.step),
             "grad_norm": optax.tree.norm(grads), "target_tokens": sums[1]}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass
class Setup:
  """Everything derived from (model config, mesh, optimizer): shapes, shardings, compiled fns."""
  model: Transformer
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shapes: TrainState  # ShapeDtypeStructs without shardings
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  init: Callable[[jax.Array], TrainState]

  @property
  def sharded_param_structs(self) -> Any:
    """Parameter ShapeDtypeStructs carrying their shardings: a restore target for orbax."""
    return partitioning.with_shardings(self.state_shapes.params, self.state_shardings.params)

  @property
  def sharded_opt_state_structs(self) -> Any:
    """Optimizer-state ShapeDtypeStructs carrying their shardings: a restore target for orbax."""
    return partitioning.with_shardings(self.state_shapes.opt_state, self.state_shardings.opt_state)


def setup(config: ModelConfig, mesh: jax.sharding.Mesh, rules: tuple, tx: optax.GradientTransformation,
          seq_len: int = 8) -> Setup:
  """Works out every shape and sharding of the train state without allocating it."""
  model = Transformer(config)
  init_boxed = partitioning.param_init_fn(model, seq_len)
  param_shapes, param_shardings = partitioning.param_shapes_and_shardings(init_boxed, mesh, rules)
  opt_shapes = jax.eval_shape(tx.init, param_shapes)
  opt_shardings = partitioning.state_shardings_like(opt_shapes, param_shapes, param_shardings, mesh)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  state_shapes = TrainState(step=scalar, params=param_shapes, opt_state=opt_shapes)
  state_shardings = TrainState(step=partitioning.replicated(mesh), params=param_shardings,
                               opt_state=opt_shardings)

  @functools.partial(jax.jit, out_shardings=state_shardings)
  def init(rng):
    params = nn.unbox(init_boxed(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def init_fn(rng):
    with partitioning.activate(mesh, rules):
      return init(rng)

  return Setup(model, mesh, rules, state_shapes, state_shardings,
               partitioning.batch_sharding(mesh, rules), init_fn)


def compile_train_step(s: Setup, tx, schedule, **step_kwargs) -> Callable:
  """The jitted step with explicit shardings; the mesh and rules are active when it traces."""
  step = jax.jit(functools.partial(train_step, model=s.model, tx=tx, schedule=schedule, **step_kwargs),
                 in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, partitioning.replicated(s.mesh)),
                 donate_argnums=(0,))

  def run(state, batch):
    with partitioning.activate(s.mesh, s.rules):
      return step(state, batch)

  return run


class _StopSignal:
  """Turns SIGTERM into a flag checked at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      self.requested = True
    self._previous = signal.signal(signal.SIGTERM, handler)
    return self

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  if not (math.isfinite(float(metrics["loss"])) and math.isfinite(float(metrics["grad_norm"]))):
    raise FloatingPointError(f"loss or gradient became {float(metrics['loss'])} / {float(metrics['grad_norm'])} "
                             f"at step {step}; the last good checkpoint is kept. Lower the learning rate "
                             "or enable clipping.")


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
          async_checkpointing: bool = True) -> TrainState:
  """Trains to `train_steps`, resuming from the newest checkpoint in `model_dir` if there is one.

  The run's gin files bind `mesh`, `rules`, `learning_rate_schedule` and `optimizer` (to
  `@make_mesh()`, `@axis_rules()`, `@make_schedule()` and `@make_optimizer()`), so the operative
  config written to `model_dir` shows them; a Python caller may pass the objects or leave them None
  for those configurables' gin or default settings.
  """
  if not model_dir:
    raise UserError("MODEL_DIR is not set: pass --gin.MODEL_DIR=/path/to/run (checkpoints and logs go there)")
  data_lib.check_task_name(mixture_or_task_name)
  mesh = partitioning.make_mesh() if mesh is None else mesh
  rules = partitioning.axis_rules() if rules is None else rules
  schedule = learning_rate_schedule or optimizers.make_schedule(train_steps)
  tx = optimizer or optimizers.make_optimizer(schedule)
  if not (isinstance(task_feature_lengths, Mapping) and set(task_feature_lengths) == {"inputs", "targets"}):
    raise UserError(f"TASK_FEATURE_LENGTHS={task_feature_lengths!r} is not a dict of 'inputs' and 'targets' "
                    "lengths; pass --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 128, 'targets': 32}\"")
  seq_len = sum(task_feature_lengths.values())
  s = setup(model_config, mesh, rules, tx, seq_len)
  if batch_size % partitioning.data_parallel_size(mesh, rules) or batch_size % num_microbatches:
    raise UserError(f"BATCH_SIZE={batch_size} must divide by the data-parallel size "
                    f"{partitioning.data_parallel_size(mesh, rules)} and by num_microbatches={num_microbatches}")
  if pretrained.is_pretrained(initial_checkpoint_path):  # before anything is written to MODEL_DIR
    pretrained.check_config(model_config, pretrained.pretrained_model_config(initial_checkpoint_path),
                            initial_checkpoint_path)
  vocab = _check_vocab(mixture_or_task_name, model_config, model_dir, initial_checkpoint_path)

  is_main = jax.process_index() == 0
  os.makedirs(model_dir, exist_ok=True)
  progress = {"step": 0, "saving": None}  # where the run is, for the message if the disk fills up
  with contextlib.ExitStack() as stack:
    stack.enter_context(run_lock.hold(model_dir))  # one trainer per MODEL_DIR; kill -9 releases it
    stack.enter_context(_naming_a_full_disk(model_dir, progress))
    mngr = stack.enter_context(checkpointing.closing(checkpointing.manager(
        os.path.join(model_dir, checkpointing.SUBDIR), save_every=checkpoint_period, keep=checkpoints_to_keep,
        keep_period=keep_period, async_save=async_checkpointing)))
    if is_main:
      checkpointing.write_run_record(model_dir, model_config, vocab)
    restored = checkpointing.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs,
                                            on_damaged_checkpoint)
    if restored:
      step, params, opt_state = restored
      state = TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), s.state_shardings.step),
                         params=params, opt_state=opt_state)
      _log(is_main, f"resumed from step {step} in {model_dir}")
    else:
      state = s.init(jax.random.key(seed))
      if initial_checkpoint_path:
        began = time.time()
        loaded_step, params = pretrained.restore_params(initial_checkpoint_path, model_config, mesh, rules,
                                                        s.sharded_param_structs)
        state = state.replace(params=params)
        _log(is_main, f"initialised parameters from {initial_checkpoint_path} (step {loaded_step}) in "
             f"{time.time() - began:.1f}s; peak host memory {pretrained.peak_host_memory_gib():.2f} GiB")
    start = progress["step"] = int(state.step)

    step_fn = compile_train_step(s, tx, schedule, num_microbatches=num_microbatches, z_loss=z_loss,
                                 dropout_seed=seed + 1 if model_config.dropout_rate > 0 else None)
    inputs, tally = _input_iterator(model_dir, start, mixture_or_task_name, task_feature_lengths, batch_size, seed,
                                    is_main)
    batches = (data_lib.to_global(tally.count(local), s.batch_sharding) for local in inputs)  # counted, untagged
    throughput = metrics_lib.Throughput(train_steps, tokens_per_step=batch_size * seq_len)
    _log(is_main, f"training {mixture_or_task_name}: steps {start} -> {train_steps}, batch {batch_size} x {seq_len} "
         f"tokens, {model_config.num_params():,} parameters, mesh {dict(mesh.shape)}")

    previous = None  # (step, metrics) of the step before: read one step behind, while this one runs
    with _StopSignal() as stop, metrics_lib.MetricsWriter(model_dir, enabled=is_main) as writer:
      for step in range(start + 1, train_steps + 1):  # `step` is the step this iteration completes
        progress["step"] = step
        state, metrics = step_fn(state, next(batches))
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
          _check_finite(step, jax.device_get(metrics))
          checkpointing.save(mngr, step, state.params, state.opt_state, force=True)
          inputs.save(step, keep=set(mngr.all_steps()), files=tally.files(step))  # with the tally up to `step`
          accounting.publish(model_dir, inputs, step)  # MODEL_DIR/trained_on.json
          progress["saving"] = step  # an async save that fails surfaces at a later call
        if preempted:
          writer.log(f"stop requested: saved step {step}; rerun the same command to resume")
          break
      if previous is not None:
        _report(writer, throughput, *previous, every=1)
      mngr.wait_until_finished()
    return state


def _input_iterator(model_dir: str, start: int, name: str, lengths: Mapping[str, int], batch_size: int,
                    seed: int, is_main: bool) -> tuple[data_lib.InputIterator, accounting.Tally]:
  """The training batches from step `start` on, tagged with each token's task, and the tally of those
  before: from the input position and tally saved with that step, or, for a run saved without them
  (also older runs, whose positions are of untagged batches), by reading and counting `start`
  batches (exact, but O(start))."""
  directory = os.path.join(model_dir, checkpointing.INPUT_POSITIONS)
  inputs = data_lib.InputIterator(
      data_lib.get_dataset(name, lengths, "train", batch_size, seed=seed, with_task_index=True), directory)
  tally = accounting.Tally(name)
  if start == 0 or (tally.load(inputs.path(start, accounting.LOCAL_FILE)) and inputs.restore(start)):
    return inputs, tally
  _log(is_main, f"no saved input position for step {start}: reading {start} batches to reach it")
  tally = accounting.Tally(name)
  for _ in range(start):
    tally.count(next(inputs))
  return inputs, tally


@contextlib.contextmanager
def _naming_a_full_disk(model_dir: str, progress: Mapping[str, Optional[int]]):
  """Turns a write that failed for lack of space (a checkpoint, an input position, the metrics) into
  one DiskFullError."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  (orbax and tensorstore wrap the OSError in their own types)
    if not _is_disk_full(e):
      raise
    directory = os.path.join(model_dir, checkpointing.SUBDIR)
    complete = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    # What was being written: the error names orbax's or the input position's temporary directory.
    text = _chain_text(e)
    checkpoint = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
    position = re.search(re.escape(checkpointing.INPUT_POSITIONS) + r"/process_\d+/(\d+)\.tmp", text)
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
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(gin.operative_config_str())


def _check_vocab(name: str, config: ModelConfig, model_dir: str, initial_checkpoint_path: Optional[str]):
  """The run's vocabulary, after checking it fits the model, the run so far and the starting point."""
  vocab = data_lib.vocabulary(name)
  if vocab.vocab_size > config.vocab_size:
    raise UserError(f"the model's vocab_size={config.vocab_size} is smaller than the vocabulary of "
                    f"'{name}' ({vocab.vocab_size}); set ModelConfig.vocab_size >= {vocab.vocab_size}")
  recorded = checkpointing.recorded_vocabulary(model_dir)
  if recorded is not None:
    vocabularies.check_same(vocabularies.describe(recorded), vocab, model_dir)
  start = pretrained.starting_vocabulary(initial_checkpoint_path) if initial_checkpoint_path else None
  if start is not None:
    vocabularies.check_same(vocabularies.describe(start), vocab, initial_checkpoint_path)
  return vocab
