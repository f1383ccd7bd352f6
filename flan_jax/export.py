"""Export binary: `python -m flan_jax.export --gin_file=runs/export.gin --gin.CHECKPOINT_PATH=...
--gin.OUTPUT_DIR=...`."""

import copy
import os

from flan_jax import cli

cli.import_tensorflow_quietly()

import gin  # noqa: E402

# pretrained imports vocabularies and formats only where it needs them; import them before gin parses the
# flags, so their configurables exist then (gin refuses new ones once the config is locked).
from flan_jax import files  # noqa: E402,F401
from flan_jax.checkpoints import pretrained
from flan_jax.errors import UserError  # noqa: E402


def _bound(name: str):
  """export_checkpoint's gin binding `name` (a macro such as %OUTPUT_DIR resolved), or None."""
  return copy.deepcopy(gin.get_bindings("export_checkpoint", resolve_references=False).get(name))


def main(flags: cli.Flags) -> None:
  """Exports; an export cut short (a full disk, Ctrl-C, an error) leaves no directory that looks complete."""
  del flags  # everything else comes from gin
  checkpoint_path, output_dir = _bound("checkpoint_path"), _bound("output_dir")
  if isinstance(checkpoint_path, str) and checkpoint_path and not os.path.exists(checkpoint_path):
    raise UserError(f"CHECKPOINT_PATH {checkpoint_path} does not exist; pass --gin.CHECKPOINT_PATH=<model dir>, "
                    "<model dir>/checkpoints/<step>, a Hugging Face model directory or a .gguf file")
  if not isinstance(output_dir, str) or not output_dir:
    pretrained.export_checkpoint()  # it explains what is missing
    return
  with files.removed_on_failure(output_dir):
    pretrained.export_checkpoint()


if __name__ == "__main__":
  cli.run(main)
