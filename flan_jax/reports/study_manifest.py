"""The study manifest (study.json): its cells, one evaluated model each, and the conditions they compare.

A cell names its `id`, model `size` and `params`, `seed`, `condition` (one of CONDITIONS), `held_out`
cluster, number of tuning clusters `n_clusters` and `eval_dir` (its predictions); optionally `mixture`
and `trained_on` (its run's trained_on.json). An eval_dir may be local or in a bucket (flan_jax.storage).
"""

from typing import Any, Mapping

from flan_jax import storage
from flan_jax.errors import UserError

CONDITIONS = ("base", "instructions", "notemplate", "datasetname")
TUNED = "instructions"
BASELINES = ("base", "notemplate", "datasetname")  # what `TUNED` is compared with, paired per seed
CELL_FIELDS = {"id": str, "size": str, "params": int, "seed": int, "condition": str, "held_out": str,
               "n_clusters": int, "eval_dir": str}


def check_manifest(manifest: Mapping) -> list[Mapping]:
  """The manifest's cells, checked: fields, conditions, unique ids and settings, eval dirs, base cells.

  A relative eval_dir is read from the current directory.
  """
  cells = manifest.get("cells") if isinstance(manifest, Mapping) else None
  if not isinstance(cells, list) or not cells:
    raise UserError("study manifest: want an object with a non-empty 'cells' list (see study.json)")
  ids, settings, params = {}, {}, {}
  for i, cell in enumerate(cells):
    where = _where(i, cell)
    _check_cell(cell, where)
    if cell["id"] in ids:
      raise UserError(f"{where} repeats the id of cell {ids[cell['id']]}; give every cell its own id")
    ids[cell["id"]] = i
    key = cell_key(cell)
    if key in settings:
      raise UserError(f"{where} repeats the size, seed, condition, held-out cluster and number of tuning "
                      f"clusters of cell {settings[key]}; each model appears once")
    settings[key] = cell["id"]
    if params.setdefault(cell["size"], cell["params"]) != cell["params"]:
      raise UserError(f"{where} gives size {cell['size']} {cell['params']} parameters, another cell "
                      f"{params[cell['size']]}; one size has one parameter count")
  for i, cell in enumerate(cells):
    if cell["condition"] != "base" and _base_key(cell) not in settings:
      raise UserError(f"{_where(i, cell)}: no base cell with size {cell['size']}, seed {cell['seed']} and held-out "
                      f"cluster {cell['held_out']}; add the model this {cell['condition']} cell was tuned from")
  return cells


def _where(i: int, cell: Any) -> str:
  name = cell.get("id") if isinstance(cell, Mapping) else None
  return f"study manifest: cell {i}" + (f" ({name})" if isinstance(name, str) and name else "")


def _check_cell(cell: Any, where: str) -> None:
  if not isinstance(cell, Mapping):
    raise UserError(f"{where} is not an object")
  missing = [key for key in CELL_FIELDS if key not in cell]
  if missing:
    raise UserError(f"{where} has no {', '.join(missing)}; a cell names {', '.join(CELL_FIELDS)}")
  for key, kind in CELL_FIELDS.items():
    value = cell[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
      want = "a non-empty string" if kind is str else "an integer"
      raise UserError(f"{where} has a bad {key!r} ({value!r}): want {want}")
  if cell["condition"] not in CONDITIONS:
    raise UserError(f"{where} has condition {cell['condition']!r}: want one of {', '.join(CONDITIONS)}")
  if (cell["condition"] == "base") != (cell["n_clusters"] == 0) or cell["n_clusters"] < 0:
    raise UserError(f"{where} has {cell['n_clusters']} tuning clusters with condition {cell['condition']}: "
                    "want 0 for base, at least 1 otherwise")
  if cell["params"] <= 0:
    raise UserError(f"{where} has {cell['params']} parameters: want the model's parameter count")
  if not storage.isdir(storage.check(cell["eval_dir"], f"{where}: eval_dir")):
    raise UserError(f"{where}: eval_dir {cell['eval_dir']} is not a directory; evaluate the cell or fix its eval_dir")


def cell_key(cell: Mapping) -> tuple:
  """What makes a cell one model: (held_out, size, seed, condition, n_clusters)."""
  return cell["held_out"], cell["size"], cell["seed"], cell["condition"], cell["n_clusters"]


def _base_key(cell: Mapping) -> tuple:
  return cell["held_out"], cell["size"], cell["seed"], "base", 0
