"""The prediction record, defined once: evaluation writes it, the reports read it (docs/reporting.md).

A predictions file (`predictions_*.jsonl`) holds one JSON object per evaluated example: its lineage
(`Lineage`: run, checkpoint, step, split, task, dataset, cluster, template), its `kind` (scoring or
generative), `example_id`, `prompt`, for a scoring example its `options` and `scores` (per
normalisation, one number per option), then `prediction`, `target` and `correct`; `metrics` is
optional. `new_record` builds one (flan_jax.evaluation.predictions writes them); `parse_record`
checks one line and keeps what the reports use; `load_run` reads a run's files, local or in a bucket
(flan_jax.storage).
"""

import dataclasses
import fnmatch
import json
import math
from typing import Optional, Sequence

import numpy as np

from flan_jax import storage
from flan_jax.errors import UserError

# Each option's score under these normalisations: flan_jax.evaluation.predictions.normalized says what each is.
NORMALIZATIONS = ("none", "per_token", "per_char", "calibrated")
SPLITS = ("validation", "test")
KINDS = ("scoring", "generative")
REQUIRED = ("task", "dataset", "cluster", "template", "split", "kind", "example_id", "step")


@dataclasses.dataclass(frozen=True)
class Lineage:
  """Where a record comes from: the run, the checkpoint, and the task's place in the collection."""
  run: str
  checkpoint: str
  step: int
  split: str
  task: str
  dataset: str
  cluster: str
  template: Optional[int]


def new_record(lineage: Lineage, kind: str, example_id: int, prompt: str, prediction, target, correct,
               **extra) -> dict:
  """One record, its fields in the written order (`extra`: a scoring example's options and scores)."""
  return {**dataclasses.asdict(lineage), "kind": kind, "example_id": example_id, "prompt": prompt,
          **extra, "prediction": prediction, "target": target, "correct": bool(correct)}


def best(scores: Sequence[float]) -> int:
  """The index of the highest score; the first one wins a tie (a scoring example's predicted option)."""
  return int(np.argmax(np.asarray(scores, np.float64)))


@dataclasses.dataclass
class Run:
  """One run's predictions: step -> records (each record as `parse_record` keeps it)."""
  name: str
  files: list[str]
  steps: dict[int, list[dict]]


# Reading predictions.


def prediction_files(path: str) -> list[str]:
  """A predictions file, or every predictions_*.jsonl in a directory (e.g. a MODEL_DIR)."""
  if storage.isdir(path):
    files = sorted(storage.join(path, name) for name in storage.listdir(path)
                   if fnmatch.fnmatchcase(name, "predictions_*.jsonl"))
    if not files:
      raise UserError(f"{path} holds no predictions_*.jsonl files; pass a predictions file or the "
                      "directory the eval wrote them to")
    return files
  if not storage.exists(path):
    raise UserError(f"{path} does not exist; pass a predictions .jsonl file or a directory holding "
                    "predictions_*.jsonl")
  return [path]


def read_predictions(path: str) -> list[dict]:
  records = []
  with storage.open_binary(path) as f:  # line by line: a bucket's object is read by ranges, not whole
    for number, raw in enumerate(f, 1):
      where = f"{path} line {number}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text; is this a predictions .jsonl file?") from None
      if line.strip():
        records.append(parse_record(line, where))
  if not records:
    raise UserError(f"{path} is empty: no predictions to report")
  return records


def parse_record(line: str, where: str) -> dict:
  """Checks one predictions line and keeps the fields the report uses (plus `where`, for messages)."""
  try:
    raw = json.loads(line)
  except ValueError:
    raise UserError(f"{where} is not JSON; a predictions file holds one JSON object per line") from None
  _require(isinstance(raw, dict), where, "is not a JSON object; a predictions file holds one record per line")
  missing = [key for key in REQUIRED if key not in raw]
  _require(not missing, where, f"has no {', '.join(missing)}; is this a predictions file? "
           "(docs/reporting.md lists the fields)")
  _check_fields(raw, where)
  record = {key: raw[key] for key in REQUIRED}
  record.update(correct=raw.get("correct"), metrics=raw.get("metrics") or {}, where=where)
  if raw["kind"] == "scoring":
    record.update(options=raw["options"], target=raw["target"], scores=raw["scores"])
  return record


def _require(ok: bool, where: str, what: str) -> None:
  if not ok:
    raise UserError(f"{where} {what}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (_is_int(value) or isinstance(value, float)) and not math.isnan(value)


def _check_fields(raw: dict, where: str) -> None:
  for key in ("task", "dataset", "cluster"):
    _require(isinstance(raw[key], str) and raw[key], where, f"has a bad '{key}': want a non-empty string")
  _require(_is_int(raw["template"]), where, "has a bad 'template': want the template number (an integer)")
  _require(_is_int(raw["step"]) and raw["step"] >= 0, where,
           "has a bad 'step': want the checkpoint's step (an integer)")
  _require(_is_int(raw["example_id"]) or isinstance(raw["example_id"], str), where,
           "has a bad 'example_id': want an integer or a string")
  _require(raw["split"] in SPLITS, where, f"has split {raw['split']!r}: want 'validation' or 'test'")
  _require(raw["kind"] in KINDS, where, f"has kind {raw['kind']!r}: want 'scoring' or 'generative'")
  _require(raw.get("correct") is None or isinstance(raw["correct"], bool), where,
           "has a bad 'correct': want true or false")
  metrics = raw.get("metrics") or {}
  _require(isinstance(metrics, dict) and all(_is_number(v) for v in metrics.values()), where,
           "has bad 'metrics': want an object of numbers")
  if raw["kind"] == "scoring":
    _check_scoring(raw, where)


def _check_scoring(raw: dict, where: str) -> None:
  options, scores = raw.get("options"), raw.get("scores")
  _require(isinstance(options, list) and options and all(isinstance(o, str) for o in options), where,
           "is a scoring example without 'options' (a non-empty list of strings)")
  _require(raw.get("target") in options, where, "has a 'target' that is not one of its 'options'")
  _require(isinstance(scores, dict) and scores, where,
           "is a scoring example without 'scores' (per normalisation, one score per option)")
  for name, values in scores.items():
    _require(name in NORMALIZATIONS, where, f"has scores {name!r}: want {', '.join(NORMALIZATIONS)}")
    _require(isinstance(values, list) and len(values) == len(options) and all(map(_is_number, values)),
             where, f"has bad scores {name!r}: want one number per option ({len(options)})")


def load_run(name: str, paths: Sequence[str]) -> Run:
  """Reads a run's files (paths or directories); the records are grouped by step."""
  files = [f for path in paths for f in prediction_files(path)]
  steps, seen, clusters = {}, {}, {}
  for path in files:
    for record in read_predictions(path):
      key = (record["step"], record["task"], record["split"], record["example_id"])
      if key in seen:
        raise UserError(f"{record['where']} repeats example {key[3]} of {key[1]} ({key[2]}) at step {key[0]} "
                        f"(first at {seen[key]}); each example must appear once per step")
      seen[key] = record["where"]
      cluster = clusters.setdefault(record["dataset"], record["cluster"])
      if cluster != record["cluster"]:
        raise UserError(f"{record['where']} puts dataset {record['dataset']} in cluster {record['cluster']}, "
                        f"other lines in {cluster}; one dataset belongs to one cluster")
      steps.setdefault(record["step"], []).append(record)
  return Run(name, files, steps)
