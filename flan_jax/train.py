"""Training binary: `python -m flan_jax.train --gin_file=gin/runs/finetune.gin --gin.NAME=VALUE ...`."""

from flan_jax import cli

# Before a task collection (imported by the run's gin files) pulls it in, so errors stay one line.
cli.import_tensorflow_quietly()

from flan_jax.training import trainer  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  trainer.train()


if __name__ == "__main__":
  cli.run(main)
