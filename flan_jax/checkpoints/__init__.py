"""Models on disk, in and out: a run's checkpoints and records, pretrained models, and exports.

- paths.py: where things are in a run directory (model_dir_of, SUBDIR, INPUT_POSITIONS) and what kind
  of model a path names (is_pretrained), from file names alone.
- run_record.py: what a run records beside its checkpoints, one schema per file: model_config.json,
  vocabulary/, format.json, lora_base.json, trained_on.json.
- store.py: orbax checkpoints of the train state: save, resume, damaged steps, parameters alone.
- safetensors_io.py, gguf_reader.py: the file formats read (safetensors also written, in shards).
- hf.py: Hugging Face config.json both ways, the name table (our parameters <-> Hugging Face tensors)
  and the Hugging Face writer.
- weights.py: what a path holds, read onto the mesh (a Hugging Face directory, a GGUF file, a run, a
  LoRA run on its base).
- restore.py: what a path starts a run with: weights.py's parameters (named there too), gin's
  pretrained_model_config, and the seqio vocabulary and example format of the path.
- gguf_writer.py, peft.py: a parameter tree as one GGUF file; a LoRA run's adapters as a PEFT directory.
  Writers take arrays and never restore.
- export.py: the export command's body (export_checkpoint), the only module that restores and writes.

Imports: JAX, orbax and the file formats' packages; flan_jax.model, flan_jax.text and the leaves; seqio and
TensorFlow only in restore.py and export.py (through flan_jax.text's vocabularies and formats). Never
flan_jax.data, training, evaluation, reports, studies, cli or the commands.

This package imports the modules without seqio and TensorFlow, and restore.py and export.py when one of their
names is first asked of it (PEP 562), so that reading a model or a run record (the lm-evaluation-harness backend)
loads neither. Their gin configurables, pretrained_model_config (restore.py) and export_checkpoint (export.py),
are registered when those modules are imported, as the train, eval, export and study commands do.
"""

from flan_jax import lazy
from flan_jax.checkpoints import (
    gguf_reader,
    gguf_writer,
    hf,
    paths,
    peft,
    run_record,
    safetensors_io,
    store,
    weights,
)
from flan_jax.checkpoints.hf import ARCHITECTURES, SHAPE_FIELDS, check_config, config_fields, hf_config
from flan_jax.checkpoints.paths import INPUT_POSITIONS, SUBDIR, is_pretrained, model_dir_of
from flan_jax.checkpoints.run_record import (
    check_base,
    read_lora_base,
    recorded_format,
    recorded_model_config,
    recorded_vocabulary,
    write_run_record,
)
from flan_jax.checkpoints.weights import (
    Pretrained,
    load_frozen,
    load_params,
    open_pretrained,
    peak_host_memory_gib,
    restore_adapters,
    restore_merged,
    restore_params,
)

# The modules that import seqio and TensorFlow, and the names this package gives of them, imported on first use.
_LAZY = {
    "export": "export", "restore": "restore", "export_checkpoint": "export", "pretrained_model_config": "restore",
    "starting_format": "restore", "starting_vocabulary": "restore",
}

__getattr__, __dir__ = lazy.exports(__name__, _LAZY)


__all__ = [
    "ARCHITECTURES", "INPUT_POSITIONS", "Pretrained", "SHAPE_FIELDS", "SUBDIR", "check_base", "check_config",
    "config_fields", "export", "export_checkpoint", "gguf_reader", "gguf_writer", "hf", "hf_config", "is_pretrained",
    "load_frozen", "load_params", "model_dir_of", "open_pretrained", "paths", "peak_host_memory_gib", "peft",
    "pretrained_model_config", "read_lora_base", "recorded_format", "recorded_model_config", "recorded_vocabulary",
    "restore", "restore_adapters", "restore_merged", "restore_params", "run_record", "safetensors_io",
    "starting_format", "starting_vocabulary", "store", "weights", "write_run_record",
]
