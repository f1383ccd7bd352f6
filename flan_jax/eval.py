"""Zero-shot eval binary: `python -m flan_jax.eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH=...`."""

import tasks  # noqa: F401  (registers the built-in tasks and mixtures)
from flan_jax import cli, evaluation


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  evaluation.evaluate()


if __name__ == "__main__":
  cli.run(main)
