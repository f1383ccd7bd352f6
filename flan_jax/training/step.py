"""The train state, the loss and the sharded train step, in JAX alone: no TensorFlow or seqio.

The step is jitted once with explicit shardings over the mesh (the pjit pattern); flan_jax.training.trainer runs it
on the seqio pipeline with checkpoints, and scripts/benchmark_train.py times it where TensorFlow is absent.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flan_jax.model import lora as lora_lib
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig, Transformer, apply_to_features


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@jax.custom_vjp
def log_z_and_target(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(log partition function, target logit, largest logit), each [b, t], for logits [b, t, v] float32.

  The gradient is written out (softmax for log Z, one-hot for the target logit; the largest logit gets
  none): one pass over the [b, t, v] logits, where autodiff stores exp(logits - max) in the forward pass
  and reads it back. Log Z is computed as jax.nn.logsumexp computes it.
  """
  return _log_z_and_target_fwd(logits, targets)[0]


def _log_z_and_target_fwd(logits, targets):
  max_logit = jnp.max(logits, axis=-1)
  log_z = jnp.log(jnp.sum(jnp.exp(logits - max_logit[..., None]), axis=-1)) + max_logit
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return (log_z, target_logit, max_logit), (logits, targets, log_z)


def _log_z_and_target_bwd(residuals, cotangents):
  logits, targets, log_z = residuals
  d_log_z, d_target, _ = cotangents
  one_hot = jnp.arange(logits.shape[-1]) == targets[..., None]
  d_logits = jnp.exp(logits - log_z[..., None]) * d_log_z[..., None] + jnp.where(one_hot, d_target[..., None], 0.0)
  return d_logits, None


log_z_and_target.defvjp(_log_z_and_target_fwd, _log_z_and_target_bwd)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sums over weighted tokens: (loss, weight, correct). logits [b, t, v] float32.

  A token is correct when its target has the largest logit (a tie for the largest counts).
  """
  log_z, target_logit, max_logit = log_z_and_target(logits, targets)
  loss = log_z - target_logit + z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  correct = (target_logit >= max_logit).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights), jnp.sum(correct * weights)


def loss_fn(params, batch, *, model: Transformer, z_loss: float, dropout_rng: Optional[jax.Array],
            frozen: Any = None):
  """Summed loss over target tokens, and (weight, correct) for normalising and metrics.

  With `frozen` (a LoRA run's base), `params` are the adapters alone, and the gradient is theirs.
  """
  if frozen is not None:
    params = lora_lib.join(frozen, params)
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
  logits = apply_to_features(model, params, batch, deterministic=dropout_rng is None, rngs=rngs)
  loss, weight, correct = cross_entropy(logits, batch["decoder_target_tokens"],
                                        batch["decoder_loss_weights"], z_loss)
  return loss, (weight, correct)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], frozen: Any = None, *, model: Transformer,
               tx: optax.GradientTransformation, schedule: optax.Schedule, num_microbatches: int = 1,
               z_loss: float = 0.0, dropout_seed: Optional[int] = None) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch, accumulating gradients over microbatches.

  Gradients are of the summed token loss and are divided by the total number of target tokens
  at the end, so k microbatches give the same update as one batch k times larger. In a LoRA run
  `state.params` are the adapters and `frozen` the base, which has no gradient or optimizer state.
  """
  dropout_rng = None
  if dropout_seed is not None:
    dropout_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro(i, mb):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
    (loss, (weight, correct)), grads = grad_fn(state.params, mb, model=model, z_loss=z_loss, dropout_rng=rng,
                                               frozen=frozen)
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
  # A LoRA run's frozen base (flan_jax/model/lora.py): its shapes and shardings; None for full fine-tuning.
  frozen_shapes: Any = None
  frozen_shardings: Any = None

  @property
  def sharded_frozen_structs(self) -> Any:
    return partitioning.with_shardings(self.frozen_shapes, self.frozen_shardings)

  @property
  def sharded_param_structs(self) -> Any:
    """Parameter ShapeDtypeStructs carrying their shardings: a restore target for orbax."""
    return partitioning.with_shardings(self.state_shapes.params, self.state_shardings.params)

  @property
  def sharded_opt_state_structs(self) -> Any:
    """Optimizer-state ShapeDtypeStructs carrying their shardings: a restore target for orbax."""
    return partitioning.with_shardings(self.state_shapes.opt_state, self.state_shardings.opt_state)


def setup(config: ModelConfig, mesh: jax.sharding.Mesh, rules: tuple, tx: optax.GradientTransformation,
          seq_len: int = 8, lora: Optional[lora_lib.LoraConfig] = None) -> Setup:
  """Works out every shape and sharding of the train state without allocating it.

  With `lora`, the state's parameters are the adapters; the frozen base is kept apart (Setup.frozen_*),
  to be loaded from the base model and passed to the step.
  """
  if lora is not None:
    lora_lib.check(lora, config)
  model = Transformer(config, lora)
  init_all = partitioning.param_init_fn(model, seq_len)
  init_boxed = init_all if lora is None else (lambda rng: lora_lib.split(init_all(rng))[0])
  param_shapes, param_shardings = partitioning.param_shapes_and_shardings(init_boxed, mesh, rules)
  frozen_shapes = frozen_shardings = None
  if lora is not None:
    frozen_shapes, frozen_shardings = partitioning.param_shapes_and_shardings(
        lambda rng: lora_lib.split(init_all(rng))[1], mesh, rules)
    frozen_shapes = lora_lib.in_base_dtype(frozen_shapes, lora)
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
               partitioning.batch_sharding(mesh, rules), init_fn, frozen_shapes, frozen_shardings)


def compile_train_step(s: Setup, tx, schedule, **step_kwargs) -> Callable:
  """The jitted step with explicit shardings; the mesh and rules are active when it traces."""
  step = jax.jit(functools.partial(train_step, model=s.model, tx=tx, schedule=schedule, **step_kwargs),
                 in_shardings=(s.state_shardings, s.batch_sharding, s.frozen_shardings),
                 out_shardings=(s.state_shardings, partitioning.replicated(s.mesh)),
                 donate_argnums=(0,))

  def run(state, batch, frozen=None):
    with partitioning.activate(s.mesh, s.rules):
      return step(state, batch, frozen)

  def compiled_text(state, batch, frozen=None) -> str:
    """The optimised HLO of the step for these arguments' shapes (for profiles)."""
    with partitioning.activate(s.mesh, s.rules):
      return step.lower(state, batch, frozen).compile().as_text()

  run.compiled_text = compiled_text
  return run
