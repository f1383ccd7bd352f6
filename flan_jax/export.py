"""Export binary: `python -m flan_jax.export --gin_file=runs/export.gin --gin.CHECKPOINT_PATH=...
--gin.OUTPUT_DIR=...`."""

import copy

from flan_jax import cli, startup

if __name__ == "__main__":  # before TensorFlow and JAX load: Ctrl-C and TF's start-up lines stay quiet
  startup.prepare()

import gin  # noqa: E402

# Importing flan_jax.checkpoints.export registers its configurables (export_checkpoint, and through the text modules
# it imports the vocabulary's and the format's) before gin parses the flags (gin refuses new ones once the config
# is locked).
from flan_jax import files, storage  # noqa: E402,F401
from flan_jax.checkpoints import export as export_lib  # noqa: E402
from flan_jax.errors import UserError  # noqa: E402


def _bound(name: str):
  """export_checkpoint's gin binding `name` (a macro such as %OUTPUT_DIR resolved), or None."""
  return copy.deepcopy(gin.get_bindings("export_checkpoint", resolve_references=False).get(name))


def main(flags: cli.Flags) -> None:
  """Exports; an export cut short (a full disk, Ctrl-C, an error) leaves no directory that looks complete."""
  del flags  # everything else comes from gin
  checkpoint_path, output_dir = _bound("checkpoint_path"), _bound("output_dir")
  if (isinstance(checkpoint_path, str) and checkpoint_path
      and not storage.exists(storage.check(checkpoint_path, "CHECKPOINT_PATH"))):
    raise UserError(f"CHECKPOINT_PATH {checkpoint_path} does not exist; pass --gin.CHECKPOINT_PATH=<model dir>, "
                    "<model dir>/checkpoints/<step>, a Hugging Face model directory or a .gguf file")
  if not isinstance(output_dir, str) or not output_dir:
    export_lib.export_checkpoint()  # it explains what is missing
    return
  with files.removed_on_failure(storage.check(output_dir, "OUTPUT_DIR")):
    export_lib.export_checkpoint()


if __name__ == "__main__":
  cli.run(main)
