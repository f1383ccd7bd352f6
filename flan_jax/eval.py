"""Zero-shot eval binary: `python -m flan_jax.eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH=...`."""

from flan_jax import cli

cli.import_tensorflow_quietly()  # before `tasks` pulls it in, so errors stay one line

import tasks  # noqa: E402,F401  (registers the built-in tasks and mixtures)
from flan_jax import evaluation  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  evaluation.evaluate()


if __name__ == "__main__":
  cli.run(main)
