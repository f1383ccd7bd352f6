"""FLAN's reporting protocol on one run's records, and the report of several runs (`build_report`).

Per dataset: each template's accuracy and their spread; the template with the best validation
accuracy (`select_template`), reported on test; the template mean. Per cluster: the mean over its
datasets. Between runs: paired differences on the same examples. All of it JSON-ready data.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from flan_jax.errors import UserError
from flan_jax.reports.records import NORMALIZATIONS, SPLITS, Run, best
from flan_jax.reports.stats import Estimate, Settings, as_json, average, check_settings, estimate, paired_difference

QUANTITIES = ("best", "template_mean")


@dataclasses.dataclass
class Summary:
  datasets: dict  # JSON entries
  clusters: dict  # JSON entries
  examples: dict  # dataset -> quantity -> {example_id: score}, for paired comparisons


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
    return float(best(scores) == record["options"].index(record["target"]))
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
