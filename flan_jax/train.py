"""Training binary: `python -m flan_jax.train --gin_file=gin/runs/finetune.gin --gin.NAME=VALUE ...`."""

from flan_jax import cli

cli.import_tensorflow_quietly()  # before `tasks` pulls it in, so errors stay one line

import tasks  # noqa: E402,F401  (registers the built-in tasks and mixtures)
from flan_jax import trainer  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  trainer.train()


if __name__ == "__main__":
  cli.run(main)
