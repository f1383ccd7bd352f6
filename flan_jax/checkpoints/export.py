"""The export command's body: a run (or a pretrained model) restored, then written as a Hugging Face
directory, one llama.cpp GGUF file, or a LoRA run's adapters as a PEFT directory.

The only module of the folder that both restores (restore.py) and writes (hf.py, gguf_writer.py,
peft.py); it also writes the tokenizer files an exported model needs beside its weights. The writers write
local files: an OUTPUT_DIR in a bucket is written into a local temporary directory and uploaded only once
complete (flan_jax.files.publish), with its marker (config.json, adapter_config.json) last; a GGUF file is one
object upload.
"""

import json
import os
import re
from typing import Iterable, Optional

import gin
import jax

from flan_jax import files as files_lib
from flan_jax import settings, storage
from flan_jax.checkpoints import gguf_writer, hf, paths, peft, restore, run_record, safetensors_io
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.config import ModelConfig
from flan_jax.model.transformer import Transformer
from flan_jax.text import formats, tokenizers


@gin.configurable
def export_checkpoint(checkpoint_path: str = gin.REQUIRED, output_dir: str = gin.REQUIRED, *,
                      dtype: str = "bfloat16", max_shard_gb: float = 5.0,
                      model_config: Optional[ModelConfig] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[tuple] = None,
                      adapter: bool = False, export_format: str = "huggingface",
                      overwrite: bool = False) -> list[str]:
  """Exports a flan_jax checkpoint (or a pretrained model) as a Hugging Face model directory.

  The model config, vocabulary and example format are the ones the run recorded; the tokenizer
  file is copied with a tokenizer_config.json (whether it adds BOS, its chat template), so
  `transformers.AutoTokenizer` loads it and prompts as the run was trained, and generation stops
  at the tokens the run's decodes stop at (EOS, and a chat model's end of turn).
  `export_format="gguf"` writes one llama.cpp file instead (gguf_writer.py). `overwrite` allows
  a non-empty OUTPUT_DIR: the export replaces the files it writes (and a previous export's weights and
  tokenizer files it would not write again) and leaves everything else there alone.
  """
  if not checkpoint_path:
    raise UserError("CHECKPOINT_PATH is not set: pass --gin.CHECKPOINT_PATH=<model dir> or <model dir>/<step>")
  if not output_dir:
    raise UserError("OUTPUT_DIR is not set: pass --gin.OUTPUT_DIR=<directory for the Hugging Face model>")
  allowed = {"huggingface": ("bfloat16", "float16", "float32"), "gguf": ("bfloat16", "float16", "float32", "q8_0")}
  if export_format not in allowed:
    raise UserError(f"EXPORT_FORMAT {export_format!r} is not supported; use 'huggingface' or 'gguf'")
  if dtype not in allowed[export_format]:
    raise UserError(f"export dtype {dtype!r} is not supported for EXPORT_FORMAT {export_format!r}; use "
                    f"{', '.join(allowed[export_format])}")
  settings.number("export_checkpoint.max_shard_gb", max_shard_gb, low=0, low_open=True)
  storage.check(checkpoint_path, "CHECKPOINT_PATH")
  storage.check(output_dir, "OUTPUT_DIR")
  if storage.exists(output_dir) and not storage.isdir(output_dir):
    raise UserError(f"OUTPUT_DIR {output_dir} is a file; pass a directory")
  if not overwrite and storage.isdir(output_dir) and storage.listdir(output_dir):
    raise UserError(f"OUTPUT_DIR {output_dir} is not empty; choose a new directory, or pass --gin.OVERWRITE=True "
                    "to replace the files an earlier export wrote there")
  if adapter and export_format != "huggingface":
    raise UserError("EXPORT_ADAPTER=True writes a PEFT directory; drop EXPORT_FORMAT='gguf' or EXPORT_ADAPTER")
  model_dir = paths.model_dir_of(checkpoint_path)
  if adapter:  # a LoRA run's adapters alone, as a PEFT directory
    if paths.is_pretrained(checkpoint_path) or run_record.read_lora_base(model_dir) is None:
      raise UserError(f"EXPORT_ADAPTER=True needs a LoRA run's checkpoint; {checkpoint_path} records no LoRA base "
                      f"({run_record.LORA_BASE}): export it without EXPORT_ADAPTER")
    return [_export_adapter(checkpoint_path, output_dir, mesh or partitioning.make_mesh(),
                            rules or partitioning.axis_rules())]
  if model_config is None:
    model_config = (restore.pretrained_model_config(checkpoint_path) if paths.is_pretrained(checkpoint_path)
                    else run_record.recorded_model_config(model_dir))
  if model_config is None:
    raise UserError(f"{model_dir} records no model config (model_config.json); include its gin/models/*.gin "
                    "and bind export_checkpoint.model_config = @ModelConfig()")
  if export_format == "gguf":
    return [_export_gguf(checkpoint_path, output_dir, model_config, dtype=dtype, mesh=mesh, rules=rules)]
  mesh = mesh or partitioning.make_mesh()
  rules = rules or partitioning.axis_rules()
  target = partitioning.sharded_param_structs(Transformer(model_config), mesh, rules)
  step, params = restore.restore_params(checkpoint_path, model_config, mesh, rules, target)
  vocab = restore.starting_vocabulary(checkpoint_path, missing_ok=True)  # a directory without one exports without one
  bos = tokenizers.bos_id_or_zero(vocab) if vocab is not None else None
  eos = None
  if vocab is not None:
    fmt = (restore.starting_format(checkpoint_path) or {"format": formats.DEFAULT})["format"]
    stops = list(formats.stop_ids(vocab, fmt))
    eos = stops if len(stops) > 1 else vocab.eos_id
  with files_lib.local_output(output_dir) as local:
    files = hf.write(params, model_config, local, dtype=dtype, bos_id=bos, eos_id=eos,
                     max_shard_bytes=int(max_shard_gb * 2 ** 30))
    if jax.process_index() == 0 and vocab is not None and tokenizers.describe(vocab)["kind"] != "byte":
      _save_tokenizer(vocab, local)
    if jax.process_index() == 0 and storage.is_remote(output_dir):  # config.json last, an earlier one's first gone
      earlier = storage.listdir(output_dir) if overwrite and storage.isdir(output_dir) else []
      files_lib.publish(local, output_dir, hf.CONFIG, remove=_stale_export_files(earlier, files, vocab))
  if jax.process_index() == 0:
    if overwrite and not storage.is_remote(output_dir):
      _remove_stale_export_files(output_dir, files, vocab)
    print(f"exported step {step} of {checkpoint_path} to {output_dir} ({len(files)} safetensors file(s), "
          f"{dtype})", flush=True)
  return files


def _export_gguf(checkpoint_path: str, output_dir: str, model_config: ModelConfig, *, dtype: str,
                 mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[tuple] = None) -> str:
  """Writes the checkpoint (or pretrained model; a LoRA run's adapters merged) as OUTPUT_DIR/file_name(dtype).

  The architecture and the tokenizer are checked before the weights are restored, so a model llama.cpp
  cannot run, or a tokenizer it cannot represent, fails at once. Returns the file's path.
  """
  gguf_writer.check_config(model_config)
  vocab = restore.starting_vocabulary(checkpoint_path, missing_ok=True)
  stops = ()
  if vocab is not None:
    fmt = (restore.starting_format(checkpoint_path) or {"format": formats.DEFAULT})["format"]
    stops = formats.stop_ids(vocab, fmt)
  tokenizer = gguf_writer.tokenizer_metadata(vocab, model_config.vocab_size, stops)
  mesh = mesh or partitioning.make_mesh()
  rules = rules or partitioning.axis_rules()
  target = partitioning.sharded_param_structs(Transformer(model_config), mesh, rules)
  step, params = restore.restore_params(checkpoint_path, model_config, mesh, rules, target)
  name = storage.basename(storage.absolute(checkpoint_path if paths.is_pretrained(checkpoint_path)
                                          else paths.model_dir_of(checkpoint_path)))
  path = storage.join(output_dir, gguf_writer.file_name(dtype))
  with files_lib.local_output(output_dir) as local:
    written = os.path.join(local, gguf_writer.file_name(dtype))  # `path` itself unless OUTPUT_DIR is a bucket's
    gguf_writer.write(params, model_config, tokenizer, written, gguf_writer.TYPES[dtype], name=name)
    if jax.process_index() == 0:
      size = os.path.getsize(written) / 2 ** 20
      if written != path:
        storage.copy_local_to(written, path)  # one object, visible only once whole
  if jax.process_index() == 0:
    print(f"exported step {step} of {checkpoint_path} to {path} (GGUF {gguf_writer.TYPES[dtype].name}, "
          f"{size:.1f} MiB)", flush=True)
  return path


def _export_adapter(checkpoint_path: str, output_dir: str, mesh, rules) -> str:
  """Writes the run's adapters as a PEFT LoRA directory (adapter_config.json, adapter_model.safetensors)."""
  step, adapters, record, lora = restore.restore_adapters(checkpoint_path, mesh, rules)
  with files_lib.local_output(output_dir) as local:
    peft.write(adapters, ModelConfig(**record["model_config"]), lora, record["path"], local)
    if jax.process_index() == 0 and storage.is_remote(output_dir):
      files_lib.publish(local, output_dir, peft.CONFIG)
  if jax.process_index() == 0:
    print(f"exported the adapters of step {step} of {checkpoint_path} to {output_dir} (PEFT LoRA, rank {lora.rank}"
          f"{f', trained on an {lora.base_quantization} base' if lora.quantized else ''})", flush=True)
  return output_dir


def _remove_stale_export_files(output_dir: str, written: list[str], vocab) -> None:
  """After an export over an earlier one: removes the earlier export's weights and tokenizer files that
  this one did not write (a loader would prefer a stale model.safetensors or tokenizer.json to the new
  files). Only names an export writes are candidates; nothing else in the directory is touched."""
  for name in _stale_export_files(os.listdir(output_dir), written, vocab):
    path = os.path.join(output_dir, name)
    if os.path.isfile(path) and not os.path.islink(path):
      os.remove(path)


def _stale_export_files(names: Iterable[str], written: list[str], vocab) -> list[str]:
  """Of the names in an export's directory, those of an earlier export's weights and tokenizer files that this
  export (`written`: its safetensors files; `vocab`: its vocabulary) does not write again."""
  kind = tokenizers.describe(vocab)["kind"] if vocab is not None else "byte"
  keep = set(written) | ({safetensors_io.INDEX} if len(written) > 1 else set())
  if kind in tokenizers.FILES:
    keep |= {tokenizers.FILES[kind], tokenizers.RECORD, tokenizers.TOKENIZER_CONFIG}
    if getattr(vocab, "chat_template", None):
      keep.add(tokenizers.CHAT_TEMPLATE)
  owned = {safetensors_io.SINGLE, safetensors_io.INDEX, tokenizers.RECORD, tokenizers.TOKENIZER_CONFIG,
           tokenizers.CHAT_TEMPLATE, *tokenizers.FILES.values()}
  return [name for name in names
          if name not in keep and (name in owned or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name))]


def _save_tokenizer(vocab, output_dir: str) -> None:
  """The tokenizer file plus a tokenizer_config.json naming its class and special tokens."""
  tokenizers.save(vocab, output_dir)
  record = tokenizers.describe(vocab)
  if record["kind"] == "huggingface":
    token, tokenizer_class = vocab.tokenizer.id_to_token, "PreTrainedTokenizerFast"
  else:
    token, tokenizer_class = vocab.tokenizer.id_to_piece, "LlamaTokenizer"
  config = {"tokenizer_class": tokenizer_class, "model_max_length": 1 << 20, "add_bos_token": record["add_bos"]}
  for name in ("bos", "eos"):
    if record[f"{name}_id"] is not None:
      config[f"{name}_token"] = token(record[f"{name}_id"])
  if getattr(vocab, "chat_template", None):
    config["chat_template"] = vocab.chat_template
  with open(os.path.join(output_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
