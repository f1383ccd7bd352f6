"""Export binary: `python -m flan_jax.export --gin_file=runs/export.gin --gin.CHECKPOINT_PATH=...
--gin.OUTPUT_DIR=...`."""

from flan_jax import cli

cli.import_tensorflow_quietly()

# pretrained imports vocabularies and formats only where it needs them; import them before gin parses the
# flags, so their configurables exist then (gin refuses new ones once the config is locked).
from flan_jax import formats, pretrained, vocabularies  # noqa: E402,F401


def main(flags: cli.Flags) -> None:
  del flags  # everything else comes from gin
  pretrained.export_checkpoint()


if __name__ == "__main__":
  cli.run(main)
