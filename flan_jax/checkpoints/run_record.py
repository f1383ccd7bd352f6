"""What a run directory records about itself, beside its checkpoints: each file written, read and checked here.

Eval, resume and export follow these records, so none of them is told the run's model, tokenizer,
format or LoRA base again. One schema per file (all JSON; each written under a temporary name and
renamed into place):

- MODEL_DIR/model_config.json: `dataclasses.asdict(ModelConfig)`, every field by name.
- MODEL_DIR/vocabulary/: the run's vocabulary as flan_jax.text.records.save writes it
  (vocabulary.json = records.describe(): kind, vocab_size, bos_id, eos_id, sha256, add_bos, ...; a
  copy of the tokenizer file; chat_template.jinja where the tokenizer has one).
- MODEL_DIR/vocabulary/format.json: the example format, formats.describe(): {"format": one of
  records.FORMATS, "chat_template": the template in full, for "chat" only}. A vocabulary/ without it
  is an older run's, made in the `t5` format.
- MODEL_DIR/lora_base.json (LoRA runs only): {"path": the base's files (a step directory or a
  pretrained model), "hash": fingerprint(path), "lora": LoraConfig.record(), "model_config": the
  ModelConfig's fields}.
- MODEL_DIR/trained_on.json: what the run read, flan_jax.data.accounting's Tally.summary()
  {"mixture_or_task", "step", "totals", "tasks"}, copied from the tally saved with the input position
  of the newest saved step. The tally is data's; this module only puts the file in place and reads it.

MODEL_DIR may be in a bucket (flan_jax.storage): each record is then one object, uploaded whole, and the
vocabulary/ files are uploaded with vocabulary.json last.

The vocabulary is read as its record (flan_jax.text.records.VocabularySpec), not as a seqio vocabulary:
this module imports neither seqio nor TensorFlow, so the lm-evaluation-harness backend reads a run with it.
flan_jax.text.tokenizers.build makes the seqio vocabulary (restore.starting_vocabulary does).
"""

import dataclasses
import hashlib
import json
import tempfile
from typing import Optional

import jax

from flan_jax import files, storage
from flan_jax.checkpoints import paths
from flan_jax.errors import UserError
from flan_jax.model import lora as lora_lib
from flan_jax.model.config import ModelConfig
from flan_jax.text import records

MODEL_CONFIG = "model_config.json"
VOCABULARY = "vocabulary"  # a directory
FORMAT = "format.json"  # inside VOCABULARY
LORA_BASE = "lora_base.json"
TRAINED_ON = "trained_on.json"  # the name data.accounting gives the tally it saves with each input position
_SAMPLES, _CHUNK = 32, 1 << 16


# ---------------------------------------------------------------------------------------------
# model_config.json, vocabulary/ and format.json.


def write_run_record(model_dir: str, config: ModelConfig, vocab, example_format: Optional[dict] = None) -> None:
  """Records the model config, the vocabulary (with its tokenizer file) and the example format
  (formats.describe) in MODEL_DIR."""
  storage.write_json(storage.join(model_dir, MODEL_CONFIG), dataclasses.asdict(config), indent=2)
  if storage.is_remote(model_dir):  # written locally, then uploaded file by file, vocabulary.json last
    with tempfile.TemporaryDirectory(prefix="flan_jax_vocabulary_") as scratch:
      if example_format is not None:
        save_format(example_format, scratch)
      records.save(vocab, scratch)
      storage.copy_local_to(scratch, storage.join(model_dir, VOCABULARY))
    return
  if example_format is not None:  # first: a vocabulary recorded without a format means an older run's t5 format
    save_format(example_format, storage.join(model_dir, VOCABULARY))
  records.save(vocab, storage.join(model_dir, VOCABULARY))


def recorded_model_config(model_dir: str) -> Optional[ModelConfig]:
  path = storage.join(model_dir, MODEL_CONFIG)
  if not storage.isfile(path):
    return None
  return ModelConfig(**storage.read_json(path))


def recorded_vocabulary(model_dir: str) -> Optional[records.VocabularySpec]:
  """The vocabulary a run recorded, as its record and local files (records.describe gives the record,
  tokenizers.build the seqio vocabulary), or None (runs from before the record existed)."""
  directory = storage.join(model_dir, VOCABULARY)
  if not storage.isdir(directory):
    return None
  return records.read(storage.copy_to_local(directory))  # a bucket's files copied to a local folder


def recorded_format(model_dir: str) -> Optional[dict]:
  """The example format a run recorded beside its vocabulary; a run that recorded a vocabulary but
  no format (made before formats existed) used the `t5` format; None for a run with no record."""
  directory = storage.join(model_dir, VOCABULARY)
  if not storage.isdir(directory):
    return None
  return load_format(directory) or {"format": "t5"}


def save_format(record: dict, directory: str) -> None:
  """Writes `record` (formats.describe) as `directory`/format.json."""
  storage.makedirs(directory)
  storage.write_json(storage.join(directory, FORMAT), record, indent=2)


def load_format(directory: str) -> Optional[dict]:
  """The record `save_format` wrote in `directory`; None where there is none."""
  path = storage.join(directory, FORMAT)
  if not storage.isfile(path):
    return None
  record = storage.read_json(path)
  if record.get("format") not in records.FORMATS:
    raise UserError(f"{path} records an unknown example format {record.get('format')!r}; expected one of "
                    f"{', '.join(records.FORMATS)}")
  return record


# ---------------------------------------------------------------------------------------------
# lora_base.json: the frozen base a LoRA run's adapters were trained on.


def fingerprint(path: str) -> str:
  """A sha256 over a model's files: each one's relative name, size and 32 chunks of 64 KiB spread over it.

  Reading samples instead of every byte keeps it fast for a model of many GB; two different weight files of
  the same shapes differ in every chunk. `path` is a GGUF file, a Hugging Face directory or a checkpoint step.
  """
  path = storage.absolute(path)
  names = [path] if storage.isfile(path) else storage.files_under(path)
  digest = hashlib.sha256()
  for name in names:
    size = storage.size(name)
    digest.update(f"{storage.relative(name, storage.dirname(path))}\0{size}\0".encode())
    with storage.open_binary(name, block_size=_CHUNK) as f:  # in a bucket, only the sampled ranges
      for offset in sorted({size * i // _SAMPLES for i in range(_SAMPLES)} | {max(size - _CHUNK, 0)}):
        f.seek(offset)
        digest.update(f.read(_CHUNK))
  return digest.hexdigest()


def read_lora_base(model_dir: str) -> Optional[dict]:
  """The LoRA base record of `model_dir`; None for a run that is not a LoRA run."""
  path = storage.join(model_dir, LORA_BASE)
  if not storage.isfile(path):
    return None
  return storage.read_json(path)


def required_lora_base(model_dir: str) -> dict:
  """The LoRA base record of `model_dir`, which must be a LoRA run."""
  record = read_lora_base(model_dir)
  if record is None:
    raise UserError(f"{model_dir} records no LoRA base ({LORA_BASE}); it is not a LoRA run")
  return record


def write_lora_base(model_dir: str, record: dict) -> None:
  files.write_json(storage.join(model_dir, LORA_BASE), record)


def check_base(model_dir: str, initial_checkpoint_path: Optional[str], lora: lora_lib.LoraConfig,
               config: ModelConfig) -> dict:
  """The base record of a LoRA run starting or resuming in `model_dir`, after checking it still holds."""
  if not initial_checkpoint_path:
    raise UserError("a LoRA run tunes adapters on a frozen base model: set INITIAL_CHECKPOINT_PATH to a "
                    "pretrained model or a flan_jax checkpoint")
  location = paths.base_location(initial_checkpoint_path)
  record = {"path": location, "hash": fingerprint(location), "lora": lora.record(),
            "model_config": json.loads(json.dumps(config.__dict__))}
  recorded = read_lora_base(model_dir)
  if recorded is None:
    if storage.isdir(storage.join(model_dir, paths.SUBDIR)) and storage.listdir(storage.join(model_dir, paths.SUBDIR)):
      raise UserError(f"{model_dir} holds checkpoints of a full fine-tuning run; a LoRA run needs a new MODEL_DIR")
    return record
  if recorded["lora"] != record["lora"]:
    changed = sorted(k for k in record["lora"] if recorded["lora"].get(k) != record["lora"][k])
    raise UserError(f"{model_dir} was tuned with other LoRA settings ({', '.join(changed)}: {recorded['lora']}); "
                    "resume with the same LoraConfig or start a new MODEL_DIR")
  if recorded["hash"] != record["hash"]:
    raise UserError(f"the base model at {location} is not the one {model_dir}'s adapters were trained on "
                    f"({recorded['path']}, hash {recorded['hash'][:12]}); point INITIAL_CHECKPOINT_PATH at that base")
  return record


def check_base_unchanged(model_dir: str, record: dict) -> None:
  """Before a LoRA run's adapters are used: its recorded base is still there and still the same files."""
  if not storage.exists(record["path"]):
    raise UserError(f"the base model of {model_dir}, {record['path']}, is gone; restore it there to use the adapters")
  if fingerprint(record["path"]) != record["hash"]:
    raise UserError(f"the base model at {record['path']} changed since {model_dir}'s adapters were trained on it "
                    f"(hash {record['hash'][:12]}); restore that base")


# ---------------------------------------------------------------------------------------------
# trained_on.json.


def publish_trained_on(model_dir: str, tally_path: str) -> None:
  """Process 0 makes `tally_path` (the run's tally saved with a step's input position) MODEL_DIR/trained_on.json,
  atomically (a hard link, which needs no space on a full disk; a copy where links fail)."""
  if jax.process_index() != 0:
    return
  storage.copy_file(tally_path, storage.join(model_dir, TRAINED_ON))  # one trainer per MODEL_DIR: a .tmp is stale


def read_trained_on(model_dir: str) -> Optional[dict]:
  """What the run read (its trained_on.json); None where it has none."""
  path = storage.join(model_dir, TRAINED_ON)
  if not storage.exists(path):
    return None
  return storage.read_json(path)
