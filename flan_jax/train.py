"""Training binary: `python -m flan_jax.train --gin_file=gin/runs/finetune.gin --gin.NAME=VALUE ...`."""

import tasks  # noqa: F401  (registers the built-in tasks and mixtures)
from flan_jax import cli, trainer


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  trainer.train()


if __name__ == "__main__":
  cli.run(main)
