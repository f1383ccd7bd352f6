"""Optimizers and learning-rate schedules, chosen by name from gin."""

import gin
import jax.numpy as jnp
import optax

from flan_jax import settings
from flan_jax.errors import UserError

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")


@gin.configurable
def make_schedule(total_steps: int, learning_rate: float = 1e-3, schedule: str = "constant",
                  warmup_steps: int = 0, end_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0, then `schedule`:

  constant: hold; linear / cosine: decay to `end_fraction` * peak at `total_steps`;
  rsqrt: peak * sqrt(warmup_steps / step) (inverse square root, T5's shape).
  """
  if schedule not in SCHEDULES:
    raise UserError(f"make_schedule.schedule={schedule!r} is not a schedule; choose one of {', '.join(SCHEDULES)}")
  settings.integer("TRAIN_STEPS", total_steps)  # finetune.gin binds make_schedule.total_steps = %TRAIN_STEPS
  settings.number("LEARNING_RATE", learning_rate, low=0, low_open=True)
  settings.integer("make_schedule.warmup_steps", warmup_steps, minimum=0)
  settings.number("make_schedule.end_fraction", end_fraction, low=0, high=1)
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  decay_steps = max(total_steps - warmup_steps, 1)
  end = learning_rate * end_fraction
  if schedule == "constant":
    after = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    after = optax.linear_schedule(learning_rate, end, decay_steps)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_fraction)
  else:
    pivot = max(warmup_steps, 1)
    after = lambda step: learning_rate * jnp.sqrt(pivot / (step + pivot))
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def make_optimizer(schedule: optax.Schedule, name: str = "adamw", weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW or Adafactor (FLAN's choice), after optional global-norm clipping."""
  settings.number("make_optimizer.weight_decay", weight_decay, low=0)
  settings.number("make_optimizer.b1", b1, low=0, high=1, high_open=True)
  settings.number("make_optimizer.b2", b2, low=0, high=1, high_open=True)
  settings.number("make_optimizer.eps", eps, low=0, low_open=True)
  settings.number("make_optimizer.clip_norm", clip_norm, low=0, allow_none=True)
  if name == "adamw":
    tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  elif name == "adafactor":
    tx = optax.adafactor(schedule, weight_decay_rate=weight_decay or None, multiply_by_parameter_scale=False)
  else:
    raise UserError(f"make_optimizer.name={name!r} is not an optimizer; choose 'adamw' or 'adafactor'")
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx
