"""Zero-shot eval binary: `python -m flan_jax.eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH=...`."""

from flan_jax import cli

# Before a task collection (imported by the run's gin files) pulls it in, so errors stay one line.
cli.import_tensorflow_quietly()

from flan_jax.evaluation import evaluator as evaluation  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  evaluation.evaluate()


if __name__ == "__main__":
  cli.run(main)
