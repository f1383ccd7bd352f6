"""Pretrained models and exports in a bucket (gs://, on the local GCS server of tests/storage_server.py).

A tiny Hugging Face model and a GGUF file read from the bucket equal the same files read from local disk, through
the staging cache (storage.staged), which is reused while an object is unchanged and fetched again when it
changes; exports into the bucket (Hugging Face, GGUF, PEFT) equal local exports byte for byte, their marker
uploaded last; a LoRA run on a base in the bucket trains, resumes and exports; a failed export leaves nothing
that looks complete. Every staged copy goes under a temporary FLAN_JAX_CACHE, never the user's home.
"""

import contextlib
import errno
import io
import json
import os
import uuid

import gin
import jax
import numpy as np
import pytest

from flan_jax import cli, storage
from flan_jax import export as export_binary
from flan_jax.checkpoints import export as export_lib
from flan_jax.checkpoints import gguf_writer, paths, restore, run_record
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.lora import LoraConfig
from flan_jax.model.transformer import Transformer
from flan_jax.text import vocabulary
from flan_jax.text.run import run_text
from flan_jax.training import trainer
import flan_tasks  # noqa: F401
from tests import tiny_pretrained
from tests.checkpoints.test_pretrained import _run_ok
from tests.checks import assert_trees_equal, run_main

pytest.importorskip("transformers")

TEXT = "Premise: the cat sat on the mat. Does it entail a cat is sitting? Café 123"


@pytest.fixture(scope="module", autouse=True)
def staging_cache(tmp_path_factory):
  """FLAN_JAX_CACHE for the whole module: a temporary folder."""
  with pytest.MonkeyPatch.context() as patch:
    root = str(tmp_path_factory.mktemp("staging"))
    patch.setenv("FLAN_JAX_CACHE", root)
    yield root


@pytest.fixture(scope="module")
def models(gcs_bucket, tmp_path_factory):
  """name -> (local path, bucket path) of the same files: `hf`, a tiny Llama directory; `gguf`, its float32 GGUF
  export. Both local folders are named as the bucket's, so exports of either name the model alike."""
  local = tmp_path_factory.mktemp("models")
  remote = f"{gcs_bucket}/models-{uuid.uuid4().hex[:8]}"
  tiny_pretrained.build("llama", str(local / "llama"))
  export_lib.export_checkpoint(str(local / "llama"), str(local / "gguf"), dtype="float32", export_format="gguf")
  storage.copy_local_to(str(local / "llama"), f"{remote}/llama")
  storage.copy_local_to(str(local / "gguf"), f"{remote}/gguf")
  name = gguf_writer.file_name("float32")
  return {"hf": (str(local / "llama"), f"{remote}/llama"),
          "gguf": (str(local / "gguf" / name), f"{remote}/gguf/{name}")}


def _params(path):
  return jax.tree.map(np.asarray, restore.load_params(restore.open_pretrained(path)))


def _files(path) -> dict[str, bytes]:
  """name -> bytes of every file of a local or bucket directory."""
  return {storage.relative(name, path): storage.read_bytes(name) for name in storage.files_under(path)}


def _generation(path) -> int:
  return int(storage._fs(path).info(path)["generation"])


def _inodes(directory) -> dict[str, int]:
  return {name: os.stat(os.path.join(directory, name)).st_ino for name in os.listdir(directory)}


# --- Reading from the bucket. -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_a_model_in_the_bucket_reads_as_from_local_disk(kind, models):
  local, remote = models[kind]
  assert paths.is_pretrained(remote)
  opened = restore.open_pretrained(remote)
  assert opened.path == remote and opened.config == restore.open_pretrained(local).config
  assert restore.pretrained_model_config(remote) == restore.pretrained_model_config(local)
  assert_trees_equal(_params(remote), _params(local))  # bit-identical
  ours, theirs = restore.starting_vocabulary(remote), restore.starting_vocabulary(local)
  assert ours.encode(TEXT) == theirs.encode(TEXT) and (ours.bos_id, ours.eos_id) == (theirs.bos_id, theirs.eos_id)


def test_the_staging_cache_is_reused_and_fetched_again_when_an_object_changes(models, gcs_dir, tmp_path,
                                                                              staging_cache):
  local, _ = models["hf"]
  remote = f"{gcs_dir}/llama"
  storage.copy_local_to(local, remote)
  storage.write_bytes(f"{remote}/pytorch_model.bin", b"pickled weights are never fetched")
  first = storage.staged(remote, include=lambda name: not name.endswith(".bin"))
  assert first.startswith(staging_cache) and sorted(os.listdir(first)) == sorted(os.listdir(local))
  assert _files(first) == _files(local)
  inodes = _inodes(first)
  assert storage.staged(remote, include=lambda name: not name.endswith(".bin")) == first
  assert _inodes(first) == inodes  # nothing fetched again
  assert_trees_equal(_params(remote), _params(local))

  # Another model's weights under the same name: read anew; the unchanged files are not fetched again.
  other = str(tmp_path / "other")
  tiny_pretrained.build("llama", other, seed=1)
  storage.copy_local_to(os.path.join(other, "model.safetensors"), f"{remote}/model.safetensors")
  again = storage.staged(remote, include=lambda name: not name.endswith(".bin"))
  assert again != first and not os.path.exists(first)  # the older copy is gone
  changed = _inodes(again)
  assert changed["model.safetensors"] != inodes["model.safetensors"]
  assert {k: v for k, v in changed.items() if k != "model.safetensors"} == {
      k: v for k, v in inodes.items() if k != "model.safetensors"}
  assert_trees_equal(_params(remote), _params(other))

  # A single object, e.g. a GGUF file: reused, fetched again when rewritten, and a damaged copy is not trusted.
  gguf_local, _ = models["gguf"]
  gguf = f"{gcs_dir}/model.gguf"
  storage.copy_local_to(gguf_local, gguf)
  copy = storage.staged(gguf)
  inode = os.stat(copy).st_ino
  assert storage.staged(gguf) == copy and os.stat(copy).st_ino == inode
  with open(copy, "r+b") as f:  # cut short, as by a disk that filled up under it
    f.truncate(100)
  assert storage.staged(gguf) == copy and storage.read_bytes(copy) == storage.read_bytes(gguf_local)
  storage.write_bytes(gguf, b"GGUF rewritten")
  rewritten = storage.staged(gguf)
  assert storage.read_bytes(rewritten) == b"GGUF rewritten" and not os.path.exists(copy)
  assert not [n for d, _, names in os.walk(staging_cache) for n in names if n.startswith(".part_")]


def test_a_missing_model_or_an_unusable_cache_is_one_line(models, gcs_dir, tmp_path, monkeypatch):
  with pytest.raises(UserError, match="GGUF file .* does not exist"):
    restore.open_pretrained(f"{gcs_dir}/none.gguf")
  with pytest.raises(UserError, match="neither a Hugging Face model directory"):
    restore.open_pretrained(f"{gcs_dir}/none")
  storage.write_bytes(f"{gcs_dir}/pickled/config.json", b"{}")
  storage.write_bytes(f"{gcs_dir}/pickled/pytorch_model.bin", b"x")
  with pytest.raises(UserError, match=r"pickled/? has no model.safetensors .*only pickled weights"):
    restore.open_pretrained(f"{gcs_dir}/pickled")
  (tmp_path / "a_file").write_text("")
  monkeypatch.setenv("FLAN_JAX_CACHE", str(tmp_path / "a_file" / "cache"))
  with pytest.raises(UserError, match="staging cache .* cannot be created .* set FLAN_JAX_CACHE"):
    restore.open_pretrained(models["gguf"][1])


# --- Exporting into the bucket. ----------------------------------------------------------------------------------

def test_exports_into_the_bucket_equal_local_ones_with_the_marker_last(models, gcs_dir, tmp_path):
  local, remote = models["hf"]
  shard = 60e3 / 2 ** 30  # several safetensors files and an index
  export_lib.export_checkpoint(local, str(tmp_path / "hf"), dtype="float32", max_shard_gb=shard)
  written = export_lib.export_checkpoint(remote, f"{gcs_dir}/hf", dtype="float32", max_shard_gb=shard)
  assert len(written) > 1
  assert _files(f"{gcs_dir}/hf") == _files(str(tmp_path / "hf"))  # byte for byte, nothing more
  config = _generation(f"{gcs_dir}/hf/config.json")
  assert all(_generation(name) < config for name in storage.files_under(f"{gcs_dir}/hf")
             if not name.endswith("/config.json"))
  assert_trees_equal(_params(f"{gcs_dir}/hf"), _params(local))  # and it reads back from the bucket

  gguf_local, _ = models["gguf"]
  (path,) = export_lib.export_checkpoint(remote, f"{gcs_dir}/gguf", dtype="float32", export_format="gguf")
  assert path == f"{gcs_dir}/gguf/{gguf_writer.file_name('float32')}"
  assert storage.listdir(f"{gcs_dir}/gguf") == [gguf_writer.file_name("float32")]
  assert storage.read_bytes(path) == storage.read_bytes(gguf_local)


def test_overwrite_in_the_bucket_replaces_an_earlier_export(models, gcs_dir):
  local, _ = models["hf"]
  out = f"{gcs_dir}/out"
  export_lib.export_checkpoint(local, out, dtype="float32", max_shard_gb=60e3 / 2 ** 30)
  storage.write_bytes(f"{out}/notes.txt", b"mine")
  with pytest.raises(UserError, match="is not empty"):
    export_lib.export_checkpoint(local, out, dtype="float32")
  export_lib.export_checkpoint(local, out, dtype="float32", overwrite=True)
  assert storage.listdir(out) == sorted(["config.json", "generation_config.json", "model.safetensors", "notes.txt",
                                         "tokenizer.json", "tokenizer_config.json", "vocabulary.json"])


def _export(checkpoint, out, *extra):
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={checkpoint}",
                          f"--gin.OUTPUT_DIR={out}", "--gin.EXPORT_DTYPE='float32'", *extra])


def test_a_failed_export_into_the_bucket_leaves_nothing_that_looks_complete(models, gcs_dir, monkeypatch, capfd):
  local, remote = models["hf"]
  args = ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={remote}", "--gin.EXPORT_DTYPE='float32'"]

  def no_space(*_):
    raise OSError(errno.ENOSPC, "No space left on device")

  # Failing after the weights and config.json were written locally: nothing reaches the bucket.
  with monkeypatch.context() as patch:
    patch.setattr(export_lib, "_save_tokenizer", no_space)
    code, err = run_main(export_binary, args + [f"--gin.OUTPUT_DIR={gcs_dir}/new"], capfd)
  assert code != 0 and "no space left" in err.lower()
  assert not storage.exists(f"{gcs_dir}/new")
  with monkeypatch.context() as patch:
    patch.setattr(gguf_writer, "_encode", no_space)
    code, _ = run_main(export_binary, args + [f"--gin.OUTPUT_DIR={gcs_dir}/gguf", "--gin.EXPORT_FORMAT='gguf'"],
                       capfd)
  assert code != 0 and not storage.exists(f"{gcs_dir}/gguf")

  # An upload cut short over an earlier export: the earlier config.json goes first, what was uploaded is undone.
  out = f"{gcs_dir}/over"
  _export(local, out)
  before = storage.content_keys(out)
  real, calls = storage.copy_local_to, []

  def fails_on_third(src, dst):  # the store stays real; the third upload fails
    calls.append(dst)
    if len(calls) == 3:
      raise OSError(errno.ECONNRESET, "Connection reset by peer")
    real(src, dst)

  gin.clear_config()
  try:
    with monkeypatch.context() as patch, pytest.raises(OSError, match="Connection reset"):
      patch.setattr(storage, "copy_local_to", fails_on_third)
      cli.run(export_binary.main, args + [f"--gin.OUTPUT_DIR={out}", "--gin.OVERWRITE=True"])
  finally:
    gin.clear_config()
  assert len(calls) == 3
  after = storage.content_keys(out)
  assert not paths.is_pretrained(out) and "config.json" not in after
  assert all(before.get(name) == key for name, key in after.items())  # what is left is the earlier export's


# --- A LoRA run on a base in the bucket. -------------------------------------------------------------------------

def _mesh():
  return partitioning.make_mesh(devices=jax.devices()[:1])


def _train(base, model_dir, steps):
  """`steps` steps of LoRA on the base at `base`, in this process; what it printed."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out), run_text(vocabulary=vocabulary.pretrained_vocabulary(base)):
    trainer.train(model_dir, mixture_or_task_name="embedded_parity", task_feature_lengths={"inputs": 48, "targets": 16},
                  train_steps=steps, batch_size=4, model_config=restore.pretrained_model_config(base), mesh=_mesh(),
                  checkpoint_period=2, log_every=1, async_checkpointing=False, initial_checkpoint_path=base,
                  lora=LoraConfig(rank=4, alpha=8.0))
  return out.getvalue()


@pytest.fixture(scope="module")
def lora_run(models, gcs_bucket):
  """A LoRA run in the bucket on the bucket's base: 2 steps, then resumed to 3; (base, MODEL_DIR, the resumed
  run's output)."""
  _, base = models["hf"]
  model_dir = f"{gcs_bucket}/lora-{uuid.uuid4().hex[:8]}/run"
  _train(base, model_dir, 2)
  return base, model_dir, _train(base, model_dir, 3)


def test_a_lora_run_on_a_base_in_the_bucket_trains_and_resumes(lora_run, models):
  base, model_dir, resumed = lora_run
  assert f"resumed from step 2 in {model_dir}" in resumed and f"froze the base {base}" in resumed
  record = run_record.read_lora_base(model_dir)
  assert record["path"] == base
  assert record["hash"] == run_record.fingerprint(models["hf"][0])  # the bucket's copy hashes as the local files
  steps = sorted(int(d) for d in storage.listdir(storage.join(model_dir, paths.SUBDIR)) if d.isdigit())
  assert steps == [2, 3]
  lines = [json.loads(line) for line in storage.read_text(f"{model_dir}/train_metrics.jsonl").splitlines()]
  assert [line["step"] for line in lines] == [1, 2, 3]


def test_a_lora_run_on_a_base_in_the_bucket_exports_into_the_bucket(lora_run, gcs_bucket, tmp_path):
  _, model_dir, _ = lora_run
  out = f"{gcs_bucket}/lora-exports-{uuid.uuid4().hex[:8]}"
  for where in (f"{out}/adapter", str(tmp_path / "adapter")):
    export_lib.export_checkpoint(model_dir, where, adapter=True, mesh=_mesh())
  assert _files(f"{out}/adapter") == _files(str(tmp_path / "adapter"))  # base_model_name_or_path: the bucket's base
  assert sorted(storage.listdir(f"{out}/adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
  assert _generation(f"{out}/adapter/adapter_config.json") > _generation(f"{out}/adapter/adapter_model.safetensors")
  export_lib.export_checkpoint(model_dir, f"{out}/merged", dtype="float32", mesh=_mesh())
  config = restore.pretrained_model_config(f"{out}/merged")
  structs = partitioning.sharded_param_structs(Transformer(config), _mesh(), partitioning.axis_rules())
  step, merged = restore.restore_params(model_dir, config, _mesh(), partitioning.axis_rules(), structs)
  assert step == 3
  assert_trees_equal(_params(f"{out}/merged"), merged)  # read back from the bucket: the merged model, bit for bit
