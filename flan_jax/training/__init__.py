"""Training: the sharded train step and the loop that feeds it, saves it and resumes it.

- step.py: the train state, the loss (cross entropy with z-loss) and one jitted step, microbatched, with
  LoRA's frozen base passed beside the trained parameters. JAX only.
- optimizers.py: the learning-rate schedule and the optimizer, from gin.
- trainer.py: `train` (the training binary's gin entry point): the run directory, resume, the loop,
  checkpoints, SIGTERM, divergence. Import it as `flan_jax.training.trainer`; this package does not, so
  that the step can be imported without TensorFlow and seqio.
- run_lock.py: one trainer per run directory.

Imports: model, text, data, checkpoints and the leaves (step.py and optimizers.py: model and the leaves
only). Never evaluation, reports, studies, cli or the commands.
"""

from flan_jax.training import optimizers, step
from flan_jax.training.step import Setup, TrainState, compile_train_step, setup, train_step

__all__ = ["Setup", "TrainState", "compile_train_step", "optimizers", "setup", "step", "train_step"]
