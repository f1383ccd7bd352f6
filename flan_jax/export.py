"""Export binary: `python -m flan_jax.export --gin_file=runs/export.gin --gin.CHECKPOINT_PATH=...
--gin.OUTPUT_DIR=...`."""

from flan_jax import cli

cli.import_tensorflow_quietly()

from flan_jax import pretrained  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  pretrained.export_checkpoint()


if __name__ == "__main__":
  cli.run(main)
