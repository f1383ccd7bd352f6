"""The shape of the code: one-way layers between flan_jax's folders, no import cycle, no import-time side
effects, every gin file parseable once the commands are imported. CONTRIBUTING.md describes the layers."""

import ast
import collections
import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = ("errors", "files", "lazy", "metrics", "settings", "startup", "storage", "task_info")
COMMANDS = ("train", "eval", "export", "report", "study")
FOLDERS = ("model", "text", "reports", "data", "checkpoints", "training", "evaluation", "studies", "harness")
# What each unit may import (besides itself). A leaf imports at most flan_jax.errors and flan_jax.storage
# (which imports only flan_jax.errors).
ALLOWED = {
    "leaf": set(),
    "model": {"leaf"},
    "text": {"leaf"},
    "reports": {"leaf"},
    "data": {"leaf", "text"},
    "checkpoints": {"leaf", "model", "text"},
    "training": {"leaf", "model", "text", "data", "checkpoints"},
    "evaluation": {"leaf", "model", "text", "data", "checkpoints", "reports"},
    "studies": {"leaf", "model", "text", "data", "checkpoints", "training", "evaluation", "reports"},
    "harness": {"leaf", "model", "text", "checkpoints"},
    "cli": {"leaf"},
    "command": {"leaf", "cli", *FOLDERS},
    "flan_tasks": {"leaf", "text"},
}
LEAF_IMPORTS = {"flan_jax.storage": ("flan_jax.errors",), "flan_jax.errors": ()}
# Modules that must run without TensorFlow or seqio: the model, the train step and the lm-evaluation-harness backend
# (with what they import, and the packages' __init__ files that importing them runs).
NO_TF = ("flan_jax.model", "flan_jax.training.step", "flan_jax.harness")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  rel = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
  return "flan_tasks" + rel[len("tasks"):] if rel == "tasks" or rel.startswith("tasks.") else rel


def _sources() -> dict[str, str]:
  paths = glob.glob(os.path.join(ROOT, "flan_jax", "**", "*.py"), recursive=True)
  paths += glob.glob(os.path.join(ROOT, "tasks", "**", "*.py"), recursive=True)
  return {_module_name(p): p for p in sorted(paths)}


SOURCES = _sources()


def _resolve(name: str) -> str:
  """The module an imported name lands in: `flan_jax.model.lora` for `from flan_jax.model import lora`."""
  while name not in SOURCES and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


def _imports(path: str) -> list[tuple[str, bool, int]]:
  """(imported name, at module level?, line) for every import of the file, function-level ones included."""
  tree = ast.parse(open(path).read())
  top = set(map(id, tree.body))
  for node in tree.body:  # `if __name__ == "__main__":` and try/except blocks at module level are module level
    if isinstance(node, (ast.If, ast.Try)):
      top |= {id(n) for n in ast.walk(node)}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, id(node) in top, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out += [(f"{node.module}.{a.name}", id(node) in top, node.lineno) for a in node.names]
  return out


def _graph() -> dict[str, set[str]]:
  graph = collections.defaultdict(set)
  for module, path in SOURCES.items():
    for name, _, _ in _imports(path):
      if name.split(".")[0] in ("flan_jax", "flan_tasks"):
        target = _resolve(name)
        if target != module and target in SOURCES:
          graph[module].add(target)
  return graph


def unit(module: str) -> str:
  parts = module.split(".")
  if parts[0] == "flan_tasks":
    return "flan_tasks"
  if len(parts) == 1:
    return "package"
  if parts[-1] == "__main__":  # a folder's command (python -m flan_jax.harness)
    return "command"
  if parts[1] in FOLDERS:
    return parts[1]
  if parts[1] in LEAVES:
    return "leaf"
  if parts[1] in COMMANDS:
    return "command"
  if parts[1] == "cli":
    return "cli"
  raise AssertionError(f"{module} has no place in the layers: put it in a folder, or add it to LEAVES here "
                       "and to CONTRIBUTING.md")


def test_every_module_has_a_place():
  assert len(SOURCES) > 40
  for module in SOURCES:
    unit(module)


def test_imports_run_down_the_layers_only():
  wrong = []
  for module, targets in _graph().items():
    for target in targets:
      a, b = unit(module), unit(target)
      if a == b and a != "leaf":
        continue
      if a == "leaf" and target not in LEAF_IMPORTS.get(module, ("flan_jax.errors", "flan_jax.storage")):
        wrong.append(f"{module} -> {target} (a leaf imports only flan_jax.errors and flan_jax.storage, "
                     "and storage only errors)")
      elif a != "leaf" and b not in ALLOWED[a] and b != "package":
        wrong.append(f"{module} ({a}) -> {target} ({b})")
  assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
  graph, state, cycles = _graph(), {}, []

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for module in sorted(SOURCES):
    if module not in state:
      visit(module, [module])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_imports_of_project_modules():
  inner = [f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
           for module, path in SOURCES.items() for name, at_top, line in _imports(path)
           if not at_top and name.split(".")[0] in ("flan_jax", "flan_tasks")]
  assert not inner, "imports inside functions (move them to the top; the layers keep them acyclic):\n" + "\n".join(
      inner)


def test_the_model_the_train_step_and_the_harness_never_import_tensorflow_or_seqio():
  graph = _graph()
  seen, todo = set(), [m for m in SOURCES if m.startswith(NO_TF)]
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo += graph.get(module, ())
      parts = module.split(".")  # importing a module runs its packages' __init__ files first
      todo += [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in SOURCES]
  # startup imports TensorFlow only inside prepare(), which a command calls in its `if __name__ == "__main__":` block.
  heavy = [f"{m} imports {name}" for m in sorted(seen) for name, at_top, _ in _imports(SOURCES[m])
           if name.split(".")[0] in ("tensorflow", "seqio", "tensorflow_datasets", "t5")
           and (at_top or m != "flan_jax.startup")]
  assert len(seen) > 5 and not heavy, "\n".join(heavy)


def test_the_train_step_loads_without_tensorflow():
  """The same rule at run time: the packages' __init__ files re-export nothing that pulls TF or seqio in."""
  code = ("import sys; import flan_jax.model, flan_jax.training.step, flan_jax.training.optimizers; "
          "print(sorted(m for m in ('tensorflow', 'seqio', 'tensorflow_datasets') if m in sys.modules))")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"


def test_every_folder_says_what_it_holds_and_what_it_never_imports():
  for folder in FOLDERS:
    init = os.path.join(ROOT, "flan_jax", folder, "__init__.py")
    doc = ast.get_docstring(ast.parse(open(init).read())) or ""
    assert len(doc.splitlines()) >= 3 and "never" in doc.lower(), f"flan_jax/{folder}/__init__.py: {doc[:80]!r}"


def test_modules_stay_small_or_say_why():
  big = []
  for module, path in SOURCES.items():
    lines = len(open(path).read().splitlines())
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    if lines > 450 and "one job" not in doc:
      big.append(f"{module}: {lines} lines")
  assert not big, "modules over ~450 lines whose docstring does not say why they are one job:\n" + "\n".join(big)


_STATE = r"""
import json, logging, os, signal, sys
import jax, flax, optax, orbax.checkpoint, numpy, tensorflow, seqio, tensorflow_datasets, gin, matplotlib, lm_eval

def state():
  absl = logging.getLogger("absl")
  return {"excepthook": repr(sys.excepthook), "unraisablehook": repr(sys.unraisablehook),
          "displayhook": repr(sys.displayhook), "environ": dict(os.environ),
          "root": [repr(h) for h in logging.getLogger().handlers], "root_level": logging.getLogger().level,
          "absl": [repr(h) for h in absl.handlers], "absl_level": absl.level, "absl_propagate": absl.propagate,
          "sigint": repr(signal.getsignal(signal.SIGINT)), "sigterm": repr(signal.getsignal(signal.SIGTERM)),
          "cache": jax.config.jax_compilation_cache_dir, "stderr": repr(sys.stderr)}

before, changed = state(), {}
for name in sys.argv[1:]:
  __import__(name)
  now = state()
  diff = sorted(k for k in now if now[k] != before[k])
  if diff:
    changed[name] = diff
    before = now
print(json.dumps(changed))
"""


def test_importing_any_module_changes_no_interpreter_state():
  """Hooks, logging, signals, the environment and JAX's cache stay as they were until a command asks."""
  modules = [m for m in SOURCES if m.startswith("flan_jax") and not m.endswith("__main__")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(1))
  out = subprocess.run([sys.executable, "-c", _STATE, *modules], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_every_gin_file_parses_after_importing_the_commands():
  """Every configurable that gin/ and the docs bind is registered once the commands are imported."""
  paths = sorted(glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True))
  code = f"""
import gin, sys
from flan_jax import train, eval, export, study  # noqa: F401
import flan_tasks  # noqa: F401
bad = []
for path in {paths!r}:
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([path], [], skip_unknown=False, finalize_config=False)
  except Exception as e:
    bad.append(f"{{path}}: {{type(e).__name__}}: {{e}}".splitlines()[0])
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(1))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.join(ROOT, "gin"), timeout=300)
  assert len(paths) > 25
  assert out.returncode == 0, out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("module", ["flan_jax.train", "flan_jax.eval", "flan_jax.export", "flan_jax.study",
                                   "flan_jax.report"])
def test_commands_are_short(module):
  lines = len(open(SOURCES[module]).read().splitlines())
  assert 10 <= lines <= 45, f"{module} has {lines} lines; its body belongs in a folder"
