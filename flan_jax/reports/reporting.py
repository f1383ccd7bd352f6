"""FLAN's reporting protocol over saved per-example eval predictions; it never runs a model.

Template statistics, best-validation-template selection, cluster averages, bootstrap CIs, paired comparisons.
"""

import dataclasses
import glob
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence
import zlib

import numpy as np

from flan_jax.errors import UserError

NORMALIZATIONS = ("none", "per_token", "per_char", "calibrated")
SPLITS = ("validation", "test")
KINDS = ("scoring", "generative")
QUANTITIES = ("best", "template_mean")
REQUIRED = ("task", "dataset", "cluster", "template", "split", "kind", "example_id", "step")


@dataclasses.dataclass(frozen=True)
class Settings:
  normalization: str = "none"
  bootstrap: int = 1000
  seed: int = 0
  confidence: float = 0.95


@dataclasses.dataclass
class Run:
  """One run's predictions: step -> records (each record as `parse_record` keeps it)."""
  name: str
  files: list[str]
  steps: dict[int, list[dict]]


@dataclasses.dataclass
class Estimate:
  """A mean over examples (a fraction), its bootstrap replicates and its number of examples."""
  value: float
  draws: np.ndarray
  n: int


@dataclasses.dataclass
class Summary:
  datasets: dict  # JSON entries
  clusters: dict  # JSON entries
  examples: dict  # dataset -> quantity -> {example_id: score}, for paired comparisons


# Reading predictions.


def prediction_files(path: str) -> list[str]:
  """A predictions file, or every predictions_*.jsonl in a directory (e.g. a MODEL_DIR)."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "predictions_*.jsonl")))
    if not files:
      raise UserError(f"{path} holds no predictions_*.jsonl files; pass a predictions file or the "
                      "directory the eval wrote them to")
    return files
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist; pass a predictions .jsonl file or a directory holding "
                    "predictions_*.jsonl")
  return [path]


def read_predictions(path: str) -> list[dict]:
  records = []
  with open(path, "rb") as f:
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


# Per-example scores.


def example_score(record: Mapping[str, Any], normalization: str) -> Optional[float]:
  """1.0 or 0.0; None for an example without an accuracy (a generative one without `correct`).

  A scoring example is recomputed from its scores: the argmax over the options (the first one on a
  tie) against the index of the target.
  """
  if record["kind"] == "scoring":
    scores = record["scores"].get(normalization)
    if scores is None:
      raise UserError(f"{record['where']} has no {normalization!r} scores (it has {', '.join(record['scores'])}); "
                      "choose another --normalization")
    return float(int(np.argmax(scores)) == record["options"].index(record["target"]))
  return None if record["correct"] is None else float(record["correct"])


def available_normalizations(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The normalisations every scoring record has scores for (none when there are no scoring records)."""
  names = [set(r["scores"]) for r in records if r["kind"] == "scoring"]
  return [n for n in NORMALIZATIONS if names and all(n in s for s in names)]


def score_table(records: Sequence[Mapping[str, Any]], normalization: str) -> tuple[dict, dict]:
  """dataset -> split -> template -> {example_id: score}, and each dataset's facts.

  A dataset with scoring records (rank classification, as in the paper) ignores its generative ones.
  """
  table, facts = {}, {}
  scoring = {r["dataset"] for r in records if r["kind"] == "scoring"}
  for r in records:
    kind = "scoring" if r["dataset"] in scoring else "generative"
    info = facts.setdefault(r["dataset"], {"cluster": r["cluster"], "kind": kind, "skipped": 0,
                                           "ignored_generative": 0})
    if r["kind"] != kind:
      info["ignored_generative"] += 1
      continue
    score = example_score(r, normalization)
    if score is None:
      info["skipped"] += 1
      continue
    table.setdefault(r["dataset"], {}).setdefault(r["split"], {}).setdefault(r["template"], {})[r["example_id"]] = score
  return table, facts


def metric_means(records: Sequence[Mapping[str, Any]]) -> dict:
  """dataset -> split -> template -> {metric: mean over the examples that carry it}."""
  sums = {}
  for r in records:
    for name, value in r["metrics"].items():
      sums.setdefault(r["dataset"], {}).setdefault(r["split"], {}).setdefault(
          str(r["template"]), {}).setdefault(name, []).append(value)
  return {d: {s: {t: {m: float(np.mean(v)) for m, v in ms.items()} for t, ms in ts.items()}
              for s, ts in ss.items()} for d, ss in sums.items()}


def check_aligned(run: str, table: Mapping) -> None:
  """Every template of a dataset and split must be scored on the same examples."""
  for dataset, splits in table.items():
    for split, templates in splits.items():
      (first, ids), *others = sorted(templates.items())
      for template, scores in others:
        if scores.keys() != ids.keys():
          raise UserError(f"run {run}: {dataset} ({split}) has other examples with template {template} "
                          f"({len(scores)} scored) than with template {first} ({len(ids)}); evaluate every "
                          "template on the same examples")


# The protocol.


def template_stats(accuracies: Mapping[int, float]) -> dict:
  """Mean, standard deviation (n - 1; 0 for one template), min and max of per-template accuracies."""
  values = np.array(list(accuracies.values()), dtype=float)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(values.mean()), "std": std, "min": float(values.min()), "max": float(values.max()),
          "n_templates": len(values)}


def select_template(splits: Mapping[str, Mapping[int, Mapping[Any, float]]]) -> Optional[int]:
  """The template with the best validation accuracy (ties: the lowest number); None without validation.

  Only `splits["validation"]` is read: the test split cannot influence the choice.
  """
  validation = splits.get("validation")
  if not validation:
    return None
  accuracy = {t: float(np.mean(list(scores.values()))) for t, scores in validation.items()}
  return max(sorted(accuracy), key=accuracy.get)


def reported_split(splits: Mapping[str, Any]) -> Optional[str]:
  """Test when the dataset has it, else validation (marked as such in the report)."""
  return next((s for s in ("test", "validation") if s in splits), None)


def per_example_mean(templates: Mapping[int, Mapping[Any, float]]) -> dict:
  """Each example's score averaged over the templates (their mean is the template mean)."""
  ids = next(iter(templates.values())).keys()
  return {i: float(np.mean([scores[i] for scores in templates.values()])) for i in ids}


# The bootstrap.


def resample_means(values: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` bootstrap replicates of the mean of `values` (resampling len(values) examples with replacement).

  Drawing how often each distinct value is picked (a multinomial) has exactly the distribution of
  drawing the examples, and costs num x (distinct values) instead of num x (examples).
  """
  values = np.asarray(values, dtype=float)
  if not num or not len(values):
    return np.empty(0)
  levels, counts = np.unique(values, return_counts=True)
  picks = rng.multinomial(len(values), counts / len(values), size=num)
  return picks @ levels / len(values)


def percentile_ci(draws: np.ndarray, confidence: float) -> Optional[list[float]]:
  if not len(draws):
    return None
  tail = (1 - confidence) / 2 * 100
  return [float(v) for v in np.percentile(draws, [tail, 100 - tail])]


def rng_for(seed: int, key: str) -> np.random.Generator:
  """One generator per quantity, so a number's CI does not depend on what else is in the report."""
  return np.random.default_rng([seed, zlib.crc32(key.encode())])


def estimate(values, key: str, settings: Settings) -> Estimate:
  values = np.asarray(list(values), dtype=float)
  draws = resample_means(values, settings.bootstrap, rng_for(settings.seed, key))
  return Estimate(float(values.mean()), draws, len(values))


def average(estimates: Sequence[Estimate]) -> Optional[Estimate]:
  """The mean over datasets; each replicate averages the datasets' replicates (resampled within each)."""
  if not estimates:
    return None
  draws = np.mean(np.stack([e.draws for e in estimates]), axis=0)
  return Estimate(float(np.mean([e.value for e in estimates])), draws, sum(e.n for e in estimates))


def as_json(est: Optional[Estimate], settings: Settings, name: str = "accuracy") -> Optional[dict]:
  """In percent (points for a difference), with the percentile CI."""
  if est is None:
    return None
  ci = percentile_ci(est.draws, settings.confidence)
  return {name: 100 * est.value, "ci": None if ci is None else [100 * v for v in ci], "n": est.n}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], key: str,
                      settings: Settings) -> Optional[Estimate]:
  """Mean of a - b over the examples both have, resampled together (a paired bootstrap)."""
  ids = [i for i in a if i in b]
  return estimate([a[i] - b[i] for i in ids], key, settings) if ids else None


# Summaries.


def summarize_dataset(name: str, splits: Mapping, settings: Settings) -> tuple[dict, dict, dict]:
  """A dataset's JSON entry, its estimates and its per-example scores (quantity -> ...)."""
  best = select_template(splits)  # chosen on validation before any test score is looked at
  split = reported_split(splits)
  entry = {"best_template": best, "selected_on": "validation", "reported_split": split,
           "splits": {s: split_summary(f"{name}/{s}", splits[s], settings) for s in SPLITS if s in splits}}
  examples = {}
  if best is not None and best in splits.get(split, {}):
    examples["best"] = splits[split][best]
  if split is not None:
    examples["template_mean"] = per_example_mean(splits[split])
  keys = {"best": f"{name}/{split}/t{best}", "template_mean": f"{name}/{split}/mean"}
  estimates = {q: estimate(v.values(), keys[q], settings) for q, v in examples.items()}
  entry["best"] = as_json(estimates.get("best"), settings)
  entry["template_mean"] = as_json(estimates.get("template_mean"), settings)
  if entry["template_mean"]:
    stats = entry["splits"][split]
    entry["template_mean"].update({k: stats[k] for k in ("std", "min", "max", "n_templates")})
  return entry, estimates, examples


def split_summary(prefix: str, templates: Mapping[int, Mapping[Any, float]], settings: Settings) -> dict:
  estimates = {t: estimate(s.values(), f"{prefix}/t{t}", settings) for t, s in sorted(templates.items())}
  entry = template_stats({t: 100 * e.value for t, e in estimates.items()})
  entry["templates"] = {str(t): as_json(e, settings) for t, e in estimates.items()}
  return entry


def summarize(run: str, records: Sequence[Mapping[str, Any]], settings: Settings) -> Summary:
  """The protocol on one run at one step: every dataset, then every cluster."""
  table, facts = score_table(records, settings.normalization)
  check_aligned(run, table)
  metrics = metric_means(records)
  datasets, estimates, examples = {}, {}, {}
  for name in sorted(facts):
    entry, estimates[name], examples[name] = summarize_dataset(name, table.get(name, {}), settings)
    datasets[name] = {**facts[name], **entry, "notes": dataset_notes(facts[name], entry)}
    if name in metrics:
      datasets[name]["metrics"] = metrics[name]
  return Summary(datasets, summarize_clusters(datasets, estimates, settings), examples)


def dataset_notes(facts: Mapping, entry: Mapping) -> list[str]:
  notes = []
  if entry["reported_split"] == "validation":
    notes.append("no test split: validation numbers (the template is chosen and scored on validation)")
  if entry["best_template"] is None and entry["reported_split"]:
    notes.append("no validation split: no template chosen")
  elif entry["best"] is None and entry["reported_split"]:
    notes.append(f"template {entry['best_template']} has no {entry['reported_split']} predictions")
  if facts["skipped"]:
    notes.append(f"{facts['skipped']} examples without `correct` left out")
  if facts["ignored_generative"]:
    notes.append(f"{facts['ignored_generative']} generative examples ignored (scoring is used)")
  return notes


def summarize_clusters(datasets: Mapping[str, Mapping], estimates: Mapping[str, Mapping[str, Estimate]],
                       settings: Settings, name: str = "accuracy") -> dict:
  """Per cluster: the mean over its datasets of each quantity, with the datasets it covers."""
  clusters = {}
  for dataset in sorted(datasets):
    clusters.setdefault(datasets[dataset]["cluster"], []).append(dataset)
  summary = {}
  for cluster, names in sorted(clusters.items()):
    summary[cluster] = {"datasets": names}
    for q in QUANTITIES:
      covered = [estimates[d][q] for d in names if q in estimates[d]]
      entry = as_json(average(covered), settings, name)
      summary[cluster][q] = entry and {**entry, "n_datasets": len(covered)}
  return summary


def summarize_run(run: Run, settings: Settings) -> tuple[dict, Summary]:
  """The run's JSON entry (its newest step tabulated, every step's clusters) and its newest summary."""
  newest = max(run.steps)
  records = run.steps[newest]
  norms = available_normalizations(records)
  if norms and settings.normalization not in norms:
    raise UserError(f"run {run.name}: the scoring predictions have no {settings.normalization!r} scores "
                    f"(they have {', '.join(norms)}); choose another --normalization")
  main = summarize(run.name, records, settings)
  if not any(d["reported_split"] for d in main.datasets.values()):
    raise UserError(f"run {run.name}: no example has an accuracy (`correct`, or `scores` for scoring); "
                    "nothing to report")
  by_norm = {}
  for norm in norms:
    other = main if norm == settings.normalization else summarize(
        run.name, records, dataclasses.replace(settings, normalization=norm, bootstrap=0))
    by_norm[norm] = {c: {q: e[q] and e[q]["accuracy"] for q in QUANTITIES} for c, e in other.clusters.items()}
    add_template_accuracies(main.datasets, other.datasets, norm)
  by_step = [{"step": s, "clusters": (main if s == newest else summarize(run.name, run.steps[s], settings)).clusters}
             for s in sorted(run.steps)]
  entry = {"files": run.files, "step": newest, "steps": sorted(run.steps), "normalizations": norms,
           "skipped": sum(d["skipped"] for d in main.datasets.values()), "datasets": main.datasets,
           "clusters": main.clusters, "by_normalization": by_norm, "by_step": by_step}
  return entry, main


def add_template_accuracies(datasets: dict, other: Mapping, norm: str) -> None:
  """Each scoring template's accuracy under `norm`, from the summary computed with it."""
  for name, entry in datasets.items():
    if entry["kind"] != "scoring":
      continue
    for split, stats in entry["splits"].items():
      for template, values in stats["templates"].items():
        accuracy = other[name]["splits"][split]["templates"][template]["accuracy"]
        values.setdefault("by_normalization", {})[norm] = accuracy


# Comparing runs.


def example_keys(records: Sequence[Mapping[str, Any]]) -> dict:
  keys = {}
  for r in records:
    keys.setdefault((r["task"], r["split"]), set()).add(r["example_id"])
  return keys


def check_same_examples(name_a: str, records_a: Sequence, name_b: str, records_b: Sequence) -> None:
  """Both runs must hold the same (task, split, example_id) keys; else name the first difference."""
  a, b = example_keys(records_a), example_keys(records_b)
  for task, split in sorted(a.keys() | b.keys()):
    if (task, split) not in b or (task, split) not in a:
      only = name_a if (task, split) in a else name_b
      raise UserError(f"runs {name_a} and {name_b} were evaluated on different tasks: {task} ({split}) is only "
                      f"in {only}; compare runs evaluated on the same tasks and examples")
    ids_a, ids_b = a[task, split], b[task, split]
    if ids_a != ids_b:
      raise UserError(f"runs {name_a} and {name_b} were evaluated on different examples of {task} ({split}): "
                      f"{len(ids_a - ids_b)} only in {name_a}, {len(ids_b - ids_a)} only in {name_b}; "
                      "evaluate both on the same examples")


def compare(a: Summary, b: Summary, baseline: str, settings: Settings) -> dict:
  """Paired differences a - b (points) per dataset and per cluster, each quantity chosen per run."""
  datasets, estimates = {}, {}
  for name in sorted(a.examples.keys() & b.examples.keys()):
    estimates[name] = {}
    for q in QUANTITIES:
      if q in a.examples[name] and q in b.examples[name]:
        diff = paired_difference(a.examples[name][q], b.examples[name][q], f"{name}/{q}/paired", settings)
        if diff is not None:
          estimates[name][q] = diff
    datasets[name] = {q: as_json(estimates[name].get(q), settings, "difference") for q in QUANTITIES}
  clusters = summarize_clusters({d: a.datasets[d] for d in datasets}, estimates, settings, "difference")
  return {"baseline": baseline, "datasets": datasets, "clusters": clusters}


# The report.


def check_settings(settings: Settings) -> None:
  if settings.normalization not in NORMALIZATIONS:
    raise UserError(f"unknown normalization {settings.normalization!r}; use one of {', '.join(NORMALIZATIONS)}")
  if settings.bootstrap < 0:
    raise UserError(f"--bootstrap {settings.bootstrap}: want a number of resamples >= 0 (0: no CIs)")
  if settings.seed < 0:
    raise UserError(f"--seed {settings.seed}: want an integer >= 0")
  if not 0 < settings.confidence < 1:
    raise UserError(f"--confidence {settings.confidence}: want a level between 0 and 1, e.g. 0.95")


def cluster_order(clusters: set, held_out: Optional[str]) -> tuple[Optional[str], list[str]]:
  """The held-out cluster (given, or the only one) first, then the others by name."""
  if held_out is None and len(clusters) == 1:
    held_out = next(iter(clusters))
  if held_out is not None and held_out not in clusters:
    raise UserError(f"--held_out {held_out}: no predictions of that cluster (clusters: {', '.join(sorted(clusters))})")
  return held_out, ([held_out] if held_out else []) + sorted(clusters - {held_out})


def build_report(runs: Sequence[Run], settings: Settings = Settings(), baseline: Optional[str] = None,
                 held_out: Optional[str] = None) -> dict:
  """Every number of the report, as JSON-ready data."""
  check_settings(settings)
  if not runs:
    raise UserError("no runs given; pass --predictions RUN=PATH")
  names = [run.name for run in runs]
  if baseline is not None and baseline not in names:
    raise UserError(f"--baseline {baseline} is not one of the runs ({', '.join(names)})")
  newest = {run.name: run.steps[max(run.steps)] for run in runs}
  others = [name for name in names if baseline is not None and name != baseline]
  for name in others:
    check_same_examples(name, newest[name], baseline, newest[baseline])
  entries, summaries = {}, {}
  for run in runs:
    entries[run.name], summaries[run.name] = summarize_run(run, settings)
  held_out, order = cluster_order({c for e in entries.values() for c in e["clusters"]}, held_out)
  for entry in entries.values():
    entry["clusters"] = in_order(entry["clusters"], order)
    entry["by_normalization"] = {n: in_order(c, order) for n, c in entry["by_normalization"].items()}
  comparisons = {n: compare(summaries[n], summaries[baseline], baseline, settings) for n in others}
  for comparison in comparisons.values():
    comparison["clusters"] = in_order(comparison["clusters"], order)
  return {"normalization": settings.normalization, "confidence": settings.confidence,
          "bootstrap": settings.bootstrap, "seed": settings.seed, "held_out": held_out, "baseline": baseline,
          "clusters": order, "runs": entries,
          "comparisons": comparisons}


def in_order(clusters: Mapping[str, Any], order: Sequence[str]) -> dict:
  return {c: clusters[c] for c in order if c in clusters}


# Markdown.


def format_estimate(entry: Optional[Mapping], key: str = "accuracy") -> str:
  """An `as_json` entry as 'value [low, high]' (signed for key 'difference'); '—' for none."""
  if not entry:
    return "—"
  sign = "+" if key == "difference" else ""
  ci = entry.get("ci")
  text = f"{entry[key]:{sign}.1f}"
  return text if ci is None else f"{text} [{ci[0]:{sign}.1f}, {ci[1]:{sign}.1f}]"


def _spread(entry: Optional[Mapping]) -> str:
  if not entry:
    return "—"
  return (f"{entry['accuracy']:.1f} ± {entry['std']:.1f} [{entry['min']:.1f}, {entry['max']:.1f}] "
          f"({entry['n_templates']})")


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" + ("" if n == 1 else "s")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A markdown table's lines."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _cluster_label(report: Mapping, cluster: str) -> str:
  return f"{cluster} (held out)" if cluster == report["held_out"] else cluster


def _cluster_table(report: Mapping, quantity: str) -> list[str]:
  runs, comparisons = report["runs"], report["comparisons"]
  header = ["cluster"] + list(runs) + [f"{r} − {report['baseline']}" for r in comparisons]
  rows = []
  for cluster in report["clusters"]:
    row = [_cluster_label(report, cluster)]
    row += [format_estimate(e["clusters"].get(cluster, {}).get(quantity)) for e in runs.values()]
    row += [format_estimate(c["clusters"].get(cluster, {}).get(quantity), "difference") for c in comparisons.values()]
    rows.append(row)
  return markdown_table(header, rows)


def sentence(run: str, baseline: str, entry: Mapping, confidence: float) -> str:
  """E.g. 'tuned beats base by 4.2 points, 95% CI [1.1, 7.5]' (the CI is of run - baseline)."""
  diff = entry["difference"]
  verb = "beats" if diff > 0 else "trails" if diff < 0 else "ties with"
  text = f"{run} {verb} {baseline}" + (f" by {abs(diff):.1f} points" if diff else " (0.0 points)")
  if entry.get("ci"):
    text += f", {confidence * 100:g}% CI [{entry['ci'][0]:.1f}, {entry['ci'][1]:.1f}]"
  return text


def markdown_summary(report: Mapping) -> str:
  """The header, the cluster tables and the paired comparisons."""
  ci = (f"{report['confidence'] * 100:g}% percentile bootstrap CIs over examples ({report['bootstrap']} resamples, "
        f"seed {report['seed']})" if report["bootstrap"] else "no CIs (--bootstrap 0)")
  lines = ["# FLAN zero-shot report", "",
           f"Normalisation of scoring tasks: {report['normalization']}. {ci}. "
           f"Held-out cluster: {report['held_out'] or 'not given'}.", ""]
  for name, entry in report["runs"].items():
    steps = f" (steps {', '.join(map(str, entry['steps']))})" if len(entry["steps"]) > 1 else ""
    lines.append(f"* {name}: step {entry['step']}{steps}, {_count(len(entry['datasets']), 'dataset')}")
  lines += ["", "## Clusters", "", "Best-validation-template accuracy: the template is chosen on validation, "
            "its test accuracy is reported; a cluster is the mean over its datasets.", ""]
  lines += _cluster_table(report, "best")
  lines += ["", "Template mean: the mean accuracy over templates, then over the cluster's datasets.", ""]
  lines += _cluster_table(report, "template_mean")
  for run, comparison in report["comparisons"].items():
    lines += ["", f"## {run} against {report['baseline']} (paired bootstrap)", ""]
    for cluster, entry in comparison["clusters"].items():
      if entry["best"]:
        lines.append(f"* {_cluster_label(report, cluster)}: "
                     f"{sentence(run, report['baseline'], entry['best'], report['confidence'])} "
                     f"(best-validation-template accuracy, {_count(entry['best']['n_datasets'], 'dataset')})")
  return "\n".join(lines)


def markdown(report: Mapping) -> str:
  """The summary, the per-dataset table and the notes."""
  order = {c: i for i, c in enumerate(report["clusters"])}
  header = ["dataset", "cluster", "run", "split", "template", "best-val-template accuracy",
            "template mean ± std [min, max] (templates)"]
  header += [f"Δ vs {report['baseline']}"] * bool(report["comparisons"])
  rows, notes = [], []
  for run, entry in report["runs"].items():
    for name, d in entry["datasets"].items():
      split = {"test": "test", "validation": "validation*", None: "—"}[d["reported_split"]]
      diff = report["comparisons"].get(run, {}).get("datasets", {}).get(name, {}).get("best")
      template = "—" if d["best_template"] is None else str(d["best_template"])
      row = [name, d["cluster"], run, split, template, format_estimate(d["best"]), _spread(d["template_mean"])]
      row += [format_estimate(diff, "difference") if run != report["baseline"] else ""] * bool(report["comparisons"])
      rows.append((order[d["cluster"]], name, row))
      notes += [f"* {run}, {name}: {note}" for note in d["notes"]]
  lines = [markdown_summary(report), "", "## Datasets", ""]
  lines += markdown_table(header, [row for _, _, row in sorted(rows, key=lambda r: r[:2])])
  lines += ["", "\\* no test split: validation numbers."]
  return "\n".join(lines + (["", "## Notes", ""] + notes if notes else [])) + "\n"


# Charts (matplotlib is imported here only, with the Agg canvas).


def new_figure(width: float, height: float):
  """A matplotlib Figure (inches) on an Agg canvas, without pyplot's global state."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure


def error_bars(entries: Sequence[Optional[Mapping]]) -> tuple[list[float], np.ndarray]:
  """Heights and asymmetric error bars (zero without a CI) in points."""
  heights = [e["accuracy"] if e else math.nan for e in entries]
  lows = [max(0.0, e["accuracy"] - e["ci"][0]) if e and e["ci"] else 0.0 for e in entries]
  highs = [max(0.0, e["ci"][1] - e["accuracy"]) if e and e["ci"] else 0.0 for e in entries]
  return heights, np.array([lows, highs])


def plot_clusters(report: Mapping, path: str) -> None:
  """Grouped bars: per cluster, each run's best-validation-template accuracy with its CI."""
  clusters, runs = report["clusters"], list(report["runs"])
  figure = new_figure(max(5.0, 1.2 * len(clusters) * max(1, len(runs)) ** 0.5 + 2), 4.0)
  axes = figure.add_subplot()
  width = 0.8 / len(runs)
  for i, run in enumerate(runs):
    entries = [report["runs"][run]["clusters"].get(c, {}).get("best") for c in clusters]
    heights, errors = error_bars(entries)
    xs = np.arange(len(clusters)) + (i - (len(runs) - 1) / 2) * width
    axes.bar(xs, heights, width, yerr=errors, capsize=3, label=run)
  axes.set_xticks(np.arange(len(clusters)), [_cluster_label(report, c).replace(" (", "\n(") for c in clusters])
  axes.set_ylabel("accuracy (%)")
  axes.set_title("Zero-shot accuracy per cluster\n(best validation template)", fontsize=10)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path)


def plot_steps(report: Mapping, run: str, path: str) -> None:
  """A run's cluster accuracies (best validation template) against the training step, with CI bands."""
  by_step = report["runs"][run]["by_step"]
  figure = new_figure(6.0, 4.0)
  axes = figure.add_subplot()
  for cluster in report["clusters"]:
    points = [(s["step"], s["clusters"][cluster]["best"]) for s in by_step
              if (s["clusters"].get(cluster) or {}).get("best")]
    if not points:
      continue
    steps = [p[0] for p in points]
    axes.plot(steps, [p[1]["accuracy"] for p in points], marker="o", label=_cluster_label(report, cluster))
    if all(p[1]["ci"] for p in points):
      axes.fill_between(steps, [p[1]["ci"][0] for p in points], [p[1]["ci"][1] for p in points], alpha=0.2)
  axes.set_xlabel("training step")
  axes.set_ylabel("accuracy (%)")
  axes.set_title(f"{run}: accuracy against step")
  axes.legend()
  figure.tight_layout()
  figure.savefig(path)


def plot_templates(report: Mapping, path: str) -> None:
  """Per dataset and run: every template's accuracy (dots) and their mean (a bar), on the reported split."""
  order = {c: i for i, c in enumerate(report["clusters"])}
  datasets = sorted({(order[d["cluster"]], name) for e in report["runs"].values() for name, d in e["datasets"].items()})
  runs = list(report["runs"])
  figure = new_figure(max(5.0, 0.5 * len(datasets) * len(runs) + 2), 4.5)
  axes = figure.add_subplot()
  width = 0.8 / len(runs)
  for i, run in enumerate(runs):
    color, label = f"C{i % 10}", run
    for x, (_, name) in enumerate(datasets):
      d = report["runs"][run]["datasets"].get(name)
      if not d or not d["reported_split"]:
        continue
      scores = [t["accuracy"] for t in d["splits"][d["reported_split"]]["templates"].values()]
      center = x + (i - (len(runs) - 1) / 2) * width
      axes.scatter([center] * len(scores), scores, s=12, color=color, label=label)
      label = None
      axes.hlines(np.mean(scores), center - width / 2, center + width / 2, color=color)
  axes.set_xticks(np.arange(len(datasets)), [name for _, name in datasets], rotation=45, ha="right")
  axes.set_ylabel("accuracy (%), test or else validation")
  axes.set_title("Accuracy of every template\n(line: mean over templates)", fontsize=10)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path)
