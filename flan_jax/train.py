"""Training binary: `python -m flan_jax.train --gin_file=gin/runs/finetune.gin --gin.NAME=VALUE ...`."""

from flan_jax import cli, startup

if __name__ == "__main__":  # before TensorFlow and JAX load: Ctrl-C and TF's start-up lines stay quiet
  startup.prepare()

from flan_jax.training import trainer  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  trainer.train()


if __name__ == "__main__":
  cli.run(main)
