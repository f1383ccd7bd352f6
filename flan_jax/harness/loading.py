"""What a checkpoint path gives the lm-evaluation-harness backend: flan_jax's model, its parameters on the
mesh, and the Hugging Face tokenizer that lm-eval's own `hf` backend would tokenize with.

- A Hugging Face model directory: the config and safetensors through flan_jax.checkpoints.restore (placed on
  the mesh shard by shard), the tokenizer through `transformers.AutoTokenizer` on the same directory, with the
  same `add_bos_token` argument the `hf` backend passes it.
- A flan_jax run directory (MODEL_DIR, MODEL_DIR/checkpoints or a step directory; a LoRA run gives its adapters
  merged into its base): the recorded model_config.json and the newest (or named) step's parameters; the
  tokenizer is the recorded vocabulary/tokenizer.json as a `transformers.PreTrainedTokenizerFast`, with the
  recorded BOS/EOS ids and, unless `add_bos_token` says otherwise, the recorded rule for adding BOS.
- A GGUF file: its tensors, and the tokenizer that flan_jax.text writes out of it (as for a run).

Byte and SentencePiece vocabularies are refused with one line: lm-eval needs a Hugging Face tokenizer.
Models are read with flan_jax.checkpoints.weights and runs' records with run_record, tokenizer files with
flan_jax.text.records and gguf_tokenizer: none of them imports seqio or TensorFlow, which the backend never uses.
"""

import dataclasses
import tempfile
from typing import Any, Optional

import jax
from jax.sharding import Mesh
import transformers

from flan_jax import storage
from flan_jax.checkpoints import paths, run_record, weights
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.config import DTYPES, ModelConfig
from flan_jax.model.transformer import Transformer
from flan_jax.text import gguf_tokenizer, records

# The files of a Hugging Face directory in a bucket that its tokenizer needs (its local copy holds only these).
_TOKENIZER_FILES = (".json", ".model", ".jinja", ".txt")


@dataclasses.dataclass
class Loaded:
  """A checkpoint opened for the harness."""
  path: str
  kind: str  # "huggingface", "gguf" or "run"
  step: int  # the restored step (0 for a pretrained model)
  config: ModelConfig
  params: Any  # on `mesh`, with the shardings partitioning's rules give
  mesh: Mesh
  rules: tuple
  tokenizer: Any  # a transformers tokenizer
  add_bos_token: Optional[bool]  # what the backend passes as add_special_tokens (None: the tokenizer decides)
  stop_ids: tuple[int, ...]  # the ids that end a generation: the tokenizer's EOS and any others the model lists


def open_checkpoint(path: str, *, dtype: Optional[str] = None, add_bos_token: Optional[bool] = None,
                    mesh: Optional[Mesh] = None, rules: Optional[tuple] = None) -> Loaded:
  """Opens `path` (a Hugging Face directory, a GGUF file or a flan_jax run) onto `mesh` (default: every device,
  data parallel).

  `dtype` ("float32", "bfloat16", "float16", or "auto"/None for what the checkpoint records) sets both the
  compute and the parameter dtype.
  """
  if not path:
    raise UserError("model_args needs checkpoint=PATH: a Hugging Face directory, a .gguf file or a flan_jax run")
  mesh = mesh if mesh is not None else partitioning.make_mesh(devices=jax.devices())
  rules = rules or partitioning.axis_rules()
  if paths.is_pretrained(path):
    return _open_pretrained(path, dtype, add_bos_token, mesh, rules)
  return _open_run(path, dtype, add_bos_token, mesh, rules)


def _dtype_fields(dtype: Optional[str], recorded: Optional[str]) -> dict:
  """ModelConfig overrides for the `dtype` model argument (`recorded`: what the checkpoint says, if anything)."""
  if dtype in (None, "", "auto"):
    dtype = recorded if recorded in DTYPES else None
    if dtype is None:
      return {}
  if dtype not in DTYPES:
    raise UserError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)} (or auto)")
  return {"dtype": dtype, "param_dtype": dtype}


def _open_pretrained(path: str, dtype, add_bos_token, mesh, rules) -> Loaded:
  hf_config = weights.read_config(path)
  recorded = hf_config.get("torch_dtype") or hf_config.get("dtype")
  pretrained = weights.open_pretrained(path, **_dtype_fields(dtype, recorded if dtype == "auto" else "float32"))
  params = weights.load_params(pretrained, mesh, rules)
  if path.endswith(".gguf"):
    tokenizer, add_bos = _gguf_tokenizer(path, add_bos_token)
    eos_ids = _listed(hf_config.get("eos_token_id"))
    kind = "gguf"
  else:
    tokenizer, add_bos = _auto_tokenizer(path, add_bos_token), add_bos_token
    eos_ids = records.config_ids(path, "eos_token_id")  # config.json's, then generation_config.json's
    kind = "huggingface"
  return Loaded(path, kind, 0, pretrained.config, params, mesh, rules, tokenizer, add_bos,
                _stop_ids(tokenizer, eos_ids))


def _open_run(path: str, dtype, add_bos_token, mesh, rules) -> Loaded:
  if not storage.isdir(path):
    raise UserError(f"checkpoint={path} is neither a Hugging Face directory, a .gguf file nor a flan_jax run")
  model_dir = paths.model_dir_of(path)
  config = run_record.recorded_model_config(model_dir)
  if config is None and not storage.isdir(storage.join(model_dir, paths.SUBDIR)):
    raise UserError(f"checkpoint={path} holds no model: no config.json with weights (Hugging Face), no .gguf file "
                    f"and no flan_jax run ({run_record.MODEL_CONFIG}, {paths.SUBDIR}/); point it at one of those")
  if config is None:
    raise UserError(f"{model_dir} records no {run_record.MODEL_CONFIG}, so its model is unknown; evaluate a run "
                    "made by this version of flan_jax, or export it first (python -m flan_jax.export)")
  config = dataclasses.replace(config, **_dtype_fields(dtype, config.dtype))
  vocab = run_record.recorded_vocabulary(model_dir)
  if vocab is None:
    raise UserError(f"{model_dir} records no vocabulary/, so its tokenizer is unknown")
  tokenizer, add_bos = _tokenizer_of(vocab, model_dir, add_bos_token)
  target = partitioning.sharded_param_structs(Transformer(config), mesh, rules)
  step, params = weights.restore_params(path, config, mesh, rules, target)
  return Loaded(path, "run", step, config, params, mesh, rules, tokenizer, add_bos,
                _stop_ids(tokenizer, vocab.stop_ids))


def _auto_tokenizer(path: str, add_bos_token: Optional[bool]):
  """The tokenizer lm-eval's `hf` backend makes for a model directory (AutoTokenizer, fast, add_bos_token)."""
  local = storage.staged(path, include=lambda name: "/" not in name and name.endswith(_TOKENIZER_FILES))
  kwargs = {"use_fast": True}
  if add_bos_token is not None:
    kwargs["add_bos_token"] = add_bos_token
  try:
    return transformers.AutoTokenizer.from_pretrained(local, **kwargs)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} has no tokenizer that transformers can load ({str(e).splitlines()[0]}); copy the "
                    "model's tokenizer files into it") from e


def _gguf_tokenizer(path: str, add_bos_token: Optional[bool]):
  """(tokenizer, add_bos_token) of a GGUF file: the tokenizer files flan_jax writes out of it (as its vocabulary
  for a run), read as a directory's (records.of_directory)."""
  local = storage.staged(path)  # `path` itself unless it is in a bucket
  with tempfile.TemporaryDirectory(prefix="flan_jax_gguf_tokenizer_") as directory:
    try:
      gguf_tokenizer.write_tokenizer_files(gguf_tokenizer.open_reader(local), local, directory)
      spec = records.of_directory(directory)
    except UserError as e:  # named by the path the user gave, not by its staged copy
      if local == path:
        raise
      raise UserError(str(e).replace(local, path)) from e
    return _tokenizer_of(spec, path, add_bos_token)  # the transformers tokenizer holds the file's contents


def _tokenizer_of(spec: records.VocabularySpec, where: str, add_bos_token: Optional[bool]):
  """(tokenizer, add_bos_token) for a flan_jax vocabulary: its tokenizer.json with its special ids; adding BOS
  follows `add_bos_token`, else the vocabulary's own rule (what the run trained with)."""
  if spec.kind != records.HuggingFaceTokenizer.kind:
    raise UserError(f"{where} uses a {spec.kind} vocabulary; the lm-evaluation-harness backend needs a Hugging Face "
                    "tokenizer.json (runs trained with a pretrained model's tokenizer have one)")
  # The same special ids and BOS rule as the run's seqio vocabulary (tokenizers.HuggingFaceVocabulary is one).
  vocab = records.HuggingFaceTokenizer(spec.file, spec.bos_id, spec.eos_id, add_bos=spec.add_bos,
                                       chat_template=spec.chat_template, stop_ids=spec.stop_ids)
  add_bos = bool(vocab.add_bos) if add_bos_token is None else bool(add_bos_token)
  special = {name: vocab.token_text(token_id) for name, token_id in
             (("bos_token", vocab.bos_id), ("eos_token", vocab.eos_id), ("unk_token", vocab.unk_id))
             if token_id is not None}
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=vocab.tokenizer_file, add_bos_token=add_bos,
                                                   **special)
  if vocab.chat_template:
    tokenizer.chat_template = vocab.chat_template
  tokenizer.name_or_path = where  # lm-eval's name for the tokenizer in its results
  return tokenizer, add_bos


def _listed(value) -> list[int]:
  if value is None:
    return []
  return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _stop_ids(tokenizer, others) -> tuple[int, ...]:
  ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
  return tuple(dict.fromkeys(ids + [int(i) for i in others]))
