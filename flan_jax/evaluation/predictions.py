"""Per-example eval records: rank classification under each normalisation, and decoded answers.

The records are the report's input (docs/reporting.md): one JSON object per evaluated example, as
flan_jax.reports.records defines it; NORMALIZATIONS and Lineage are that module's, imported here for
the evaluator.
"""

import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from flan_jax import files
from flan_jax.reports.records import NORMALIZATIONS, Lineage, best, new_record


def normalized(log_likelihood: float, num_tokens: int, text: str, content_free: float) -> dict[str, float]:
  """An option's score under every normalisation.

  none: the summed log-probability of its continuation tokens given the prompt (the delimiter's
  tokens included, no EOS; the `t5` format scores the option's EOS too), lm-evaluation-harness's
  `acc`; per_token: divided by that number of tokens; per_char: divided by the option's own length
  in characters, without the delimiter, exactly as lm-evaluation-harness 0.4's `acc_norm` divides
  (`len(choice)`); calibrated: minus the option's log-likelihood after an empty prompt (the start
  token only), which removes the model's prior for the option itself.
  """
  return {"none": log_likelihood, "per_token": log_likelihood / max(num_tokens, 1),
          "per_char": log_likelihood / max(len(text), 1), "calibrated": log_likelihood - content_free}


def scoring_records(examples: Sequence[Mapping[str, Any]], log_likelihoods: Sequence[float],
                    content_free: Mapping[str, float], lineage: Lineage, normalization: str) -> list[dict]:
  """One record per example from the scored option rows of a rank-classification task.

  `examples` are the task's rows in order (t5's rank_classification: `idx` = [example, option],
  `inputs_pretokenized`, `targets_pretokenized`, `targets`, `is_correct`).
  """
  groups: dict[int, list] = {}
  for row, ll in zip(examples, log_likelihoods):
    groups.setdefault(int(row["idx"][0]), []).append((int(row["idx"][1]), row, float(ll)))
  records = []
  for example_id, options in groups.items():
    options.sort(key=lambda o: o[0])
    texts = [text(row["targets_pretokenized"]) for _, row, _ in options]
    scores = [normalized(ll, int(np.count_nonzero(row["targets"])), option, float(content_free[option]))
              for (_, row, ll), option in zip(options, texts)]
    by_name = {name: [s[name] for s in scores] for name in NORMALIZATIONS}
    correct = [i for i, (_, row, _) in enumerate(options) if bool(row["is_correct"])]
    target = texts[correct[0]] if correct else None
    prediction = texts[best(by_name[normalization])]
    records.append(new_record(lineage, "scoring", example_id, text(options[0][1]["inputs_pretokenized"]),
                              prediction, target, prediction == target, options=texts, scores=by_name))
  return records


def generative_records(examples: Sequence[Mapping[str, Any]], predictions: Sequence[Any],
                       targets: Sequence[Any], lineage: Lineage) -> list[dict]:
  """One record per example of a decoding task: its postprocessed prediction against the target."""
  records = []
  for position, (row, prediction, target) in enumerate(zip(examples, predictions, targets)):
    example_id = int(row["example_id"]) if "example_id" in row else position
    records.append(new_record(lineage, "generative", example_id, text(row.get("inputs_pretokenized", b"")),
                              _jsonable(prediction), _jsonable(target), prediction == target))
  return records


def accuracy(records: Iterable[Mapping[str, Any]]) -> float:
  """Percent of records that are correct."""
  flags = [bool(r["correct"]) for r in records]
  return 100.0 * float(np.mean(flags)) if flags else 0.0


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str) -> None:
  """One JSON line per record; the file appears only once complete (flan_jax.files)."""
  with files.replacing(path) as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _jsonable(value):
  if isinstance(value, bytes):
    return text(value)
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  return value
