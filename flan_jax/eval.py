"""Zero-shot eval binary: `python -m flan_jax.eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH=...`."""

from flan_jax import cli, startup

if __name__ == "__main__":  # before TensorFlow and JAX load: Ctrl-C and TF's start-up lines stay quiet
  startup.prepare()

from flan_jax.evaluation import evaluator  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  evaluator.evaluate()


if __name__ == "__main__":
  cli.run(main)
