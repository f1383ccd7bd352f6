"""Every file flan_jax reads or writes at a user's path goes through flan_jax/storage.py, so a path in a bucket
works wherever a local one does. This test walks the source of flan_jax/ and tasks/ and fails on any call of
open(), os's file functions, os.path, shutil, fcntl or glob outside storage.py, unless LOCAL_ONLY lists the
function (or the whole module) with the reason its paths are always local. A listing that no longer matches a
call fails too, so the list stays the truth."""

import ast
import os

from tests.conftest import ROOT

OS_FILE_FUNCTIONS = {"open", "replace", "rename", "remove", "unlink", "makedirs", "mkdir", "listdir", "scandir",
                     "walk", "rmdir", "stat", "lstat", "chmod", "link", "symlink"}
MODULES = {"shutil", "fcntl", "glob"}

STAGED = "a local directory: a bucket's files are staged first (storage.staged)"
SCRATCH = "local scratch, uploaded through storage (files.local_output / files.publish) when the output is in a bucket"

LOCAL_ONLY = {
    # Whole modules.
    "flan_jax/text/tokenizers.py": f"tokenizer files in {STAGED}, or a run's vocabulary record written to scratch "
                                   "and uploaded (run_record.write_run_record)",
    "flan_jax/text/gguf_tokenizer.py": f"a GGUF file's tokenizer, read from {STAGED}, written into {SCRATCH}",
    "flan_jax/startup.py": "the compilation cache under ~/.cache and file descriptor 2: never a user's path",
    # Functions.
    "flan_jax/cli.py:<module>": "the package's own gin/ folder",
    "flan_jax/cli.py:configure_gin": "gin files, which gin itself opens",
    "flan_jax/checkpoints/export.py:_export_gguf": SCRATCH,
    "flan_jax/checkpoints/export.py:_remove_stale_export_files": SCRATCH,
    "flan_jax/checkpoints/export.py:_save_tokenizer": SCRATCH,
    "flan_jax/checkpoints/gguf_reader.py:write_tokenizer": SCRATCH,
    "flan_jax/checkpoints/gguf_reader.py:_write_json": SCRATCH,
    "flan_jax/checkpoints/gguf_writer.py:_sentencepiece_metadata": STAGED,
    "flan_jax/checkpoints/gguf_writer.py:write": SCRATCH,
    "flan_jax/checkpoints/hf.py:write": SCRATCH,
    "flan_jax/checkpoints/peft.py:write": SCRATCH,
    "flan_jax/checkpoints/safetensors_io.py:_check_size": STAGED,
    "flan_jax/checkpoints/safetensors_io.py:SafetensorsDirectory": STAGED,
    "flan_jax/checkpoints/safetensors_io.py:read_header": STAGED,
    "flan_jax/checkpoints/safetensors_io.py:write_sharded": SCRATCH,
    "flan_jax/data/pipeline.py:InputIterator": "tf.data's iterator state, which TensorFlow writes to local scratch; "
                                               "storage.copy_local_to uploads it to a bucket",
    "flan_jax/data/pipeline.py:use_tfds_data_dir": "expands ~ in a local TFDS_DATA_DIR; a gs:// one is passed as "
                                                   "given to TFDS, which reads it with TensorFlow's gfile",
    "flan_jax/files.py:_snapshot": "the local branch of removed_on_failure",
    "flan_jax/files.py:removed_on_failure": "its local branch; a bucket output is compared by object versions",
    "flan_jax/files.py:local_output": SCRATCH,
    "flan_jax/files.py:publish": SCRATCH,
    "flan_jax/metrics.py:MetricsWriter": "a local MODEL_DIR, or local scratch that storage.copy_local_to uploads",
    "flan_jax/reports/output.py:_draw": "matplotlib's charts, drawn into local scratch and uploaded",
    "flan_jax/text/vocabulary.py:pretrained_vocabulary": "its local branch; a bucket path is staged (_from_bucket)",
    "flan_jax/text/vocabulary.py:_pretrained": STAGED,
    "flan_jax/training/run_lock.py:_try_lock": "flock(2), for a local MODEL_DIR only (a bucket's lock is an object)",
    "flan_jax/training/run_lock.py:hold": "flock(2), for a local MODEL_DIR only (a bucket's lock is an object)",
    "flan_jax/training/run_lock.py:_describe_holder": "the local lock file",
}


def _file_calls(tree: ast.AST) -> list[tuple[str, int, str]]:
  """(enclosing top-level function or class, line, call) for each file-system call in a module."""
  found = []
  for top in tree.body:
    owner = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else "<module>"
    for node in ast.walk(top):
      if not isinstance(node, ast.Call):
        continue
      fn, name = node.func, None
      if isinstance(fn, ast.Name) and fn.id == "open":
        name = "open"
      elif isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
        if fn.value.id in MODULES or (fn.value.id == "os" and fn.attr in OS_FILE_FUNCTIONS):
          name = f"{fn.value.id}.{fn.attr}"
      elif (isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Attribute) and fn.value.attr == "path"
            and isinstance(fn.value.value, ast.Name) and fn.value.value.id == "os"):
        name = f"os.path.{fn.attr}"
      if name:
        found.append((owner, node.lineno, name))
  return found


def _sources() -> list[str]:
  out = []
  for top in ("flan_jax", "tasks"):
    for directory, _, names in os.walk(os.path.join(ROOT, top)):
      out += [os.path.relpath(os.path.join(directory, n), ROOT) for n in names if n.endswith(".py")]
  return sorted(p.replace(os.sep, "/") for p in out if p.replace(os.sep, "/") != "flan_jax/storage.py")


def test_only_storage_touches_a_users_files():
  bypasses, used = [], set()
  for rel in _sources():
    with open(os.path.join(ROOT, rel)) as f:
      tree = ast.parse(f.read())
    for owner, line, call in _file_calls(tree):
      key = rel if rel in LOCAL_ONLY else f"{rel}:{owner}"
      if key in LOCAL_ONLY:
        used.add(key)
      else:
        bypasses.append(f"{rel}:{line} in {owner}: {call}()")
  assert not bypasses, ("read and write users' paths through flan_jax.storage (or list the function in LOCAL_ONLY "
                        "with the reason its paths are always local):\n" + "\n".join(bypasses))
  assert not set(LOCAL_ONLY) - used, f"LOCAL_ONLY lists what makes no file call any more: {set(LOCAL_ONLY) - used}"


def test_the_walk_sees_the_calls_it_is_there_to_catch():
  tree = ast.parse("import os, shutil\nopen('x')\ndef f(p):\n  os.path.exists(p)\n  shutil.rmtree(p)\n"
                   "class C:\n  def g(self):\n    os.replace('a', 'b')\n")
  assert _file_calls(tree) == [("<module>", 2, "open"), ("f", 4, "os.path.exists"), ("f", 5, "shutil.rmtree"),
                               ("C", 8, "os.replace")]
