"""The report of a FLAN-paper study: model sizes x seeds x conditions x held-out clusters x numbers of tuning clusters.

Reads each evaluated cell's zero-shot predictions with `reporting` (it never runs a model); see `build`.
"""

import collections
import dataclasses
import errno
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from flan_jax import files
from flan_jax.errors import DiskFullError, UserError, first_line
from flan_jax.reports import reporting

CONDITIONS = ("base", "instructions", "notemplate", "datasetname")
TUNED = "instructions"
BASELINES = ("base", "notemplate", "datasetname")  # what `TUNED` is compared with, paired per seed
CELL_FIELDS = {"id": str, "size": str, "params": int, "seed": int, "condition": str, "held_out": str,
               "n_clusters": int, "eval_dir": str}
FIGURES = {"conditions": "conditions.png", "clusters": "clusters.png", "scale": "scale.png"}


@dataclasses.dataclass
class _Cell:
  """One evaluated model: its manifest entry, its JSON entry and what the bootstrap needs."""
  spec: Mapping[str, Any]
  entry: dict
  examples: dict  # dataset of the held-out cluster -> {example_id: score} (chosen template, reported split)
  estimates: dict  # quantity -> cluster Estimate (mean over its datasets, examples resampled within each)


# The manifest.


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
    key = _key(cell)
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
  if not os.path.isdir(cell["eval_dir"]):
    raise UserError(f"{where}: eval_dir {cell['eval_dir']} is not a directory; evaluate the cell or fix its eval_dir")


def _key(cell: Mapping) -> tuple:
  return cell["held_out"], cell["size"], cell["seed"], cell["condition"], cell["n_clusters"]


def _base_key(cell: Mapping) -> tuple:
  return cell["held_out"], cell["size"], cell["seed"], "base", 0


# Cells.


def load_cell(spec: Mapping, settings: reporting.Settings) -> _Cell:
  """Summarizes the cell's newest step with `reporting` and bootstraps its held-out cluster's accuracy.

  The example-level replicates are keyed by the cell's id, so different cells (seeds) resample independently.
  """
  name, held_out = spec["id"], spec["held_out"]
  try:
    run = reporting.load_run(name, [spec["eval_dir"]])
    step = max(run.steps)
    summary = reporting.summarize(name, run.steps[step], dataclasses.replace(settings, bootstrap=0))
  except UserError as e:
    raise UserError(f"study cell {name}: {first_line(e)}") from e
  names = [d for d, entry in summary.datasets.items() if entry["cluster"] == held_out and "best" in summary.examples[d]]
  if not names:
    clusters = sorted({entry["cluster"] for entry in summary.datasets.values()})
    raise UserError(f"study cell {name}: {spec['eval_dir']} holds no accuracy of held-out cluster {held_out} with a "
                    f"template chosen on validation (clusters there: {', '.join(clusters)}); evaluate the cell on "
                    "its held-out cluster's validation and test splits")
  per_dataset = {d: {q: reporting.estimate(summary.examples[d][q].values(), f"{name}/{d}/{q}", settings)
                     for q in reporting.QUANTITIES} for d in names}
  estimates = {q: reporting.average([per_dataset[d][q] for d in names]) for q in reporting.QUANTITIES}
  datasets = {}
  for d in names:
    spread = summary.datasets[d]["template_mean"]
    datasets[d] = {"best_template": summary.datasets[d]["best_template"],
                   "reported_split": summary.datasets[d]["reported_split"],
                   "best": reporting.as_json(per_dataset[d]["best"], settings),
                   "template_mean": {**reporting.as_json(per_dataset[d]["template_mean"], settings),
                                     **{k: spread[k] for k in ("std", "min", "max", "n_templates")}},
                   "notes": summary.datasets[d]["notes"]}
  left_out = [d for d, e in summary.datasets.items() if e["cluster"] == held_out and d not in names]
  chosen = {d: (datasets[d]["best_template"], datasets[d]["reported_split"]) for d in names}
  entry = {**{k: spec[k] for k in CELL_FIELDS if k != "id"}, "step": step, "steps": sorted(run.steps),
           "datasets": datasets, "left_out": left_out,  # held-out datasets without a template chosen on validation
           "answers": answer_stats(run.steps[step], chosen, settings.normalization)}
  for q in reporting.QUANTITIES:
    entry[q] = {**reporting.as_json(estimates[q], settings), "n_datasets": len(names)}
  return _Cell(spec, entry, {d: summary.examples[d]["best"] for d in names}, estimates)


def answer_stats(records: Sequence[Mapping], chosen: Mapping[str, tuple], normalization: str) -> Optional[dict]:
  """How a cell's answers are spread over the options, on the examples its accuracy counts (each dataset's
  chosen template, reported split): the most frequent answer and its share (percent), the accuracy of giving
  that answer to every example, and the majority-class accuracy (the most frequent target's share), each
  averaged over the datasets. A model that gives one answer to everything scores the middle figure."""
  answers, targets = collections.Counter(), {}
  for r in records:
    scores = (r.get("scores") or {}).get(normalization)
    if r["kind"] != "scoring" or scores is None or (r["template"], r["split"]) != chosen.get(r["dataset"]):
      continue
    answers[r["options"][int(np.argmax(scores))]] += 1
    targets.setdefault(r["dataset"], []).append(r["target"])
  if not answers:
    return None
  top, count = answers.most_common(1)[0]
  share = lambda values, answer: values.count(answer) / len(values)
  return {"top_answer": top, "top_share": 100 * count / sum(answers.values()),
          "always_top_accuracy": 100 * float(np.mean([share(t, top) for t in targets.values()])),
          "majority_accuracy": 100 * float(np.mean([max(share(t, a) for a in set(t)) for t in targets.values()]))}


# The hierarchical bootstrap.


def hierarchical(estimates: Sequence[reporting.Estimate], key: str, settings: reporting.Settings) -> reporting.Estimate:
  """The mean over seeds of per-seed estimates, with replicates that resample the seeds, then the examples.

  Replicate b draws as many seeds as there are, with replacement, and averages, for each seed drawn, that seed's
  example-level replicate b (`Estimate.draws`: examples resampled within each dataset, then averaged over the
  cluster's datasets, as `reporting.average` does); a seed drawn twice counts its replicate twice. Each seed's
  replicates come from its own generator, so the example resamples of different seeds are independent. With one
  seed the replicates are that seed's, and the CI is its example-bootstrap CI. `n` is the examples over all seeds.
  """
  value = float(np.mean([e.value for e in estimates]))
  n = sum(e.n for e in estimates)
  draws = np.stack([e.draws for e in estimates])  # seeds x replicates
  if not draws.shape[1]:
    return reporting.Estimate(value, np.empty(0), n)
  replicates = np.arange(draws.shape[1])
  seeds = reporting.rng_for(settings.seed, key).integers(len(estimates), size=(len(replicates), len(estimates)))
  return reporting.Estimate(value, draws[seeds, replicates[:, None]].mean(axis=1), n)


def above_zero(est: reporting.Estimate) -> Optional[float]:
  """The fraction of bootstrap replicates above 0 (None without replicates)."""
  return float(np.mean(est.draws > 0)) if len(est.draws) else None


# The report.


def build(manifest: Mapping, settings: reporting.Settings = reporting.Settings()) -> dict:
  """Every number of the study's report, as JSON-ready data (percent, or points for differences).

  * cells: each cell's newest step: its held-out cluster's accuracy ("best": the test accuracy of the template
    chosen on validation, averaged over the cluster's datasets; "template_mean"), per dataset with the template
    spread (std, min, max over templates on the reported split). CIs: example bootstrap.
  * groups: per (held_out, size, condition, n_clusters), the mean over seeds, each seed's value and a
    hierarchical-bootstrap CI (`hierarchical`), and the template spread averaged over the seeds.
  * differences: per (held_out, size), instructions minus base, notemplate and datasetname (those that exist) at
    the held-out cluster's largest number of tuning clusters, paired per seed on the same examples (the chosen
    templates' per-example scores on the reported split), averaged over the cluster's datasets, then over seeds,
    with the hierarchical CI and the fraction of replicates above 0.
  * figures: each figure's file, or why it is skipped.
  """
  reporting.check_settings(settings)
  specs = check_manifest(manifest)
  cells = [load_cell(spec, settings) for spec in specs]
  sizes = dict(sorted({(c.spec["size"], c.spec["params"]) for c in cells}, key=lambda s: (s[1], s[0])))
  held_out = sorted({c.spec["held_out"] for c in cells})
  max_clusters = {h: max(c.spec["n_clusters"] for c in cells if c.spec["held_out"] == h) for h in held_out}
  groups = _groups(cells, sizes, settings)
  report = {"name": manifest.get("name"), "normalization": settings.normalization, "confidence": settings.confidence,
            "bootstrap": settings.bootstrap, "seed": settings.seed, "held_out": held_out, "sizes": sizes,
            "conditions": [c for c in CONDITIONS if any(g["condition"] == c for g in groups)],
            "seeds": sorted({c.spec["seed"] for c in cells}), "max_clusters": max_clusters,
            "cells": {c.spec["id"]: c.entry for c in cells}, "groups": groups,
            "differences": _differences(cells, max_clusters, sizes, settings),
            "trained_on": trained_on(specs)}
  report["figures"] = _figures(report)
  return report


def trained_on(specs: Sequence[Mapping]) -> list[dict]:
  """What the tuned models of each (size, condition, n_clusters) read, from their runs' trained_on.json
  (cells without one are left out): per task the configured rate and, summed over seeds, the examples
  and target tokens, with the realised share of examples; the packing efficiency over all of them."""
  groups = {}
  for spec in specs:
    record = spec.get("trained_on")
    if record:
      groups.setdefault((spec["size"], spec["condition"], spec["n_clusters"], spec.get("mixture")), []).append(record)
  out = []
  for (size, condition, n_clusters, mixture), records in sorted(groups.items(), key=lambda g: g[0][:3]):
    tasks = {}
    for record in records:
      for name, task in record["tasks"].items():
        entry = tasks.setdefault(name, {"configured_rate": task["configured_rate"], "examples": 0, "target_tokens": 0})
        entry["examples"] += task["examples"]
        entry["target_tokens"] += task["target_tokens"]
    examples = sum(t["examples"] for t in tasks.values())
    for entry in tasks.values():
      entry["example_share"] = entry["examples"] / examples if examples else 0.0
    tokens = sum(r["totals"]["tokens"] for r in records)
    padding = sum(r["totals"]["padding_tokens"] for r in records)
    out.append({"size": size, "condition": condition, "n_clusters": n_clusters, "mixture": mixture,
                "runs": len(records), "steps": sorted({r["step"] for r in records}), "examples": examples,
                "target_tokens": sum(t["target_tokens"] for t in tasks.values()),
                "packing_efficiency": tokens / (tokens + padding) if tokens + padding else 0.0, "tasks": tasks})
  return out


def _groups(cells: Sequence[_Cell], sizes: Mapping[str, int], settings: reporting.Settings) -> list[dict]:
  by_group = {}
  for cell in sorted(cells, key=lambda c: c.spec["seed"]):
    s = cell.spec
    by_group.setdefault((s["held_out"], s["size"], s["condition"], s["n_clusters"]), []).append(cell)
  rank = {size: i for i, size in enumerate(sizes)}
  groups = []
  for key in sorted(by_group, key=lambda k: (k[0], rank[k[1]], k[3], CONDITIONS.index(k[2]))):
    members = by_group[key]
    h, size, condition, n = key
    group = {"held_out": h, "size": size, "params": sizes[size], "condition": condition, "n_clusters": n,
             "seeds": [c.spec["seed"] for c in members],
             "per_seed": [{"seed": c.spec["seed"], "cell": c.spec["id"],
                           **{q: c.entry[q]["accuracy"] for q in reporting.QUANTITIES}} for c in members]}
    for q in reporting.QUANTITIES:
      est = hierarchical([c.estimates[q] for c in members], f"{h}/{size}/{condition}/{n}/{q}/seeds", settings)
      group[q] = {**reporting.as_json(est, settings), "n_seeds": len(members)}
    group["template_spread"] = _spread(members)
    answers = [c.entry["answers"] for c in members if c.entry["answers"]]
    means = ("top_share", "always_top_accuracy", "majority_accuracy")
    group["answers"] = answers and {"top_answers": sorted({a["top_answer"] for a in answers}),
                                    **{k: float(np.mean([a[k] for a in answers])) for k in means}}
    groups.append(group)
  return groups


def _spread(members: Sequence[_Cell]) -> dict:
  """Per dataset, the mean over seeds of its template std, min and max; and their mean over the datasets."""
  names = sorted({d for c in members for d in c.entry["datasets"]})
  datasets = {}
  for d in names:
    entries = [c.entry["datasets"][d]["template_mean"] for c in members if d in c.entry["datasets"]]
    datasets[d] = {k: float(np.mean([e[k] for e in entries])) for k in ("std", "min", "max")}
    datasets[d].update(n_templates=max(e["n_templates"] for e in entries), n_seeds=len(entries))
  return {**{k: float(np.mean([v[k] for v in datasets.values()])) for k in ("std", "min", "max")},
          "datasets": datasets}


def _differences(cells: Sequence[_Cell], max_clusters: Mapping[str, int], sizes: Mapping[str, int],
                 settings: reporting.Settings) -> list[dict]:
  index = {_key(c.spec): c for c in cells}
  seeds = sorted({c.spec["seed"] for c in cells})
  differences = []
  for h, top in max_clusters.items():
    for size in sizes:
      for baseline in BASELINES:
        pairs = [(index[h, size, seed, TUNED, top], index[h, size, seed, baseline, 0 if baseline == "base" else top])
                 for seed in seeds if (h, size, seed, TUNED, top) in index
                 and (h, size, seed, baseline, 0 if baseline == "base" else top) in index]
        if pairs:
          differences.append(_difference(h, size, sizes[size], top, baseline, pairs, settings))
  return differences


def _difference(h: str, size: str, params: int, top: int, baseline: str, pairs: Sequence[tuple[_Cell, _Cell]],
                settings: reporting.Settings) -> dict:
  per_seed, estimates = [], []
  for tuned, base in pairs:
    est = paired_cluster_difference(tuned, base, settings)
    estimates.append(est)
    per_seed.append({"seed": tuned.spec["seed"], "tuned": tuned.spec["id"], "baseline": base.spec["id"],
                     "difference": 100 * est.value})
  est = hierarchical(estimates, f"{h}/{size}/{TUNED}-{baseline}/{top}/seeds", settings)
  return {"held_out": h, "size": size, "params": params, "tuned": TUNED, "baseline": baseline, "n_clusters": top,
          "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
          **reporting.as_json(est, settings, "difference"), "n_seeds": len(pairs),
          "n_datasets": len(pairs[0][0].examples), "above_zero": above_zero(est)}


def paired_cluster_difference(tuned: _Cell, base: _Cell, settings: reporting.Settings) -> reporting.Estimate:
  """tuned - base on the held-out cluster: per dataset over the same example ids, then averaged over datasets.

  Each model's score of an example is that of the template it chose on validation (they may choose different
  ones); the examples are resampled together (`reporting.paired_difference`).
  """
  a, b = tuned.spec["id"], base.spec["id"]
  if tuned.examples.keys() != base.examples.keys():
    raise UserError(f"study cells {a} and {b}: the held-out cluster has datasets {', '.join(tuned.examples)} in {a}, "
                    f"{', '.join(base.examples)} in {b}; evaluate both on the same datasets")
  estimates = []
  for d, scores in tuned.examples.items():
    split, other = tuned.entry["datasets"][d]["reported_split"], base.entry["datasets"][d]["reported_split"]
    only_a, only_b = scores.keys() - base.examples[d].keys(), base.examples[d].keys() - scores.keys()
    if split != other or only_a or only_b:
      raise UserError(f"study cells {a} and {b} were evaluated on different examples of {d} ({split} in {a}, "
                      f"{other} in {b}; {len(only_a)} only in {a}, {len(only_b)} only in {b}); evaluate both on the "
                      "same examples")
    estimates.append(reporting.paired_difference(scores, base.examples[d], f"{a}-{b}/{d}/best/paired", settings))
  return reporting.average(estimates)


def _figures(report: Mapping) -> dict:
  figures = {name: {"file": file, "skipped": None} for name, file in FIGURES.items()}
  if not any(g["condition"] == TUNED and g["n_clusters"] < report["max_clusters"][g["held_out"]]
             for g in report["groups"]):
    figures["clusters"] = {"file": None, "skipped": f"no number-of-clusters experiment: no {TUNED} cells with fewer "
                                                    "tuning clusters than the held-out cluster's largest number"}
  if not any(len([d for d in report["differences"] if d["held_out"] == h and d["baseline"] == "base"]) > 1
             for h in report["held_out"]):
    figures["scale"] = {"file": None, "skipped": f"no held-out cluster has the {TUNED} - base gain at two or more "
                                                 f"model sizes (sizes: {', '.join(report['sizes'])})"}
  return figures


# Markdown.


def format_params(n: int) -> str:
  """E.g. 3.5M, 137B."""
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return str(n)


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" + ("" if n == 1 else "s")


def _size(report: Mapping, size: str) -> str:
  return f"{size} ({format_params(report['sizes'][size])})"


def _index(report: Mapping) -> dict:
  return {(g["held_out"], g["size"], g["condition"], g["n_clusters"]): g for g in report["groups"]}


def _ablation(report: Mapping) -> dict:
  """(held_out, size, condition) -> the group at the held-out cluster's largest number of tuning clusters."""
  top = report["max_clusters"]
  return {(g["held_out"], g["size"], g["condition"]): g for g in report["groups"]
          if g["n_clusters"] == (0 if g["condition"] == "base" else top[g["held_out"]])}


def _share(fraction: float) -> str:
  """A fraction of replicates in percent; never rounded to 0% or 100% unless it is exactly that."""
  if 0 < fraction < 0.0005:
    return "<0.1%"
  if 0.9995 <= fraction < 1:
    return ">99.9%"
  return f"{100 * fraction:.1f}%"


def _difference_text(d: Mapping) -> str:
  text = f"{d['difference']:+.1f} points" + (f" [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]" if d["ci"] else "")
  return text if d["above_zero"] is None else f"{text}, {_share(d['above_zero'])} of replicates above 0"


def headline(report: Mapping, h: str, size: str) -> Optional[str]:
  """E.g. 'sentiment, small (3.5M), 3 seeds: instructions 71.2 [65.0, 77.1] vs base 60.3 [...]: +10.9 points ...'."""
  ablation = _ablation(report)
  tuned, base = ablation.get((h, size, TUNED)), ablation.get((h, size, "base"))
  if base is None:
    return None
  diff = next((d for d in report["differences"] if (d["held_out"], d["size"], d["baseline"]) == (h, size, "base")),
              None)
  seeds = _count(base["best"]["n_seeds"], "seed")
  text = f"{h}, {_size(report, size)}, {seeds}: "
  if tuned is None or diff is None:
    return text + f"base {reporting.format_estimate(base['best'])} (no {TUNED} model)"
  return (text + f"{TUNED} {reporting.format_estimate(tuned['best'])} vs base {reporting.format_estimate(base['best'])}"
          f": {_difference_text(diff)}")


def markdown(report: Mapping) -> str:
  """The headlines, the tables and the figures (or why each is skipped)."""
  ci = (f"{report['confidence'] * 100:g}% percentile CIs from a hierarchical bootstrap (seeds resampled, then "
        f"examples within datasets; {report['bootstrap']} replicates, seed {report['seed']})" if report["bootstrap"]
        else "no CIs (bootstrap 0)")
  lines = [f"# FLAN study report{': ' + report['name'] if report.get('name') else ''}", "",
           f"{_count(len(report['cells']), 'cell')}: sizes {', '.join(_size(report, s) for s in report['sizes'])}; "
           f"seeds {', '.join(map(str, report['seeds']))}; conditions {', '.join(report['conditions'])}; held-out "
           f"clusters {', '.join(report['held_out'])}. Accuracy: the test accuracy of the template chosen on "
           f"validation, averaged over the held-out cluster's datasets, then over seeds. Normalisation of scoring "
           f"tasks: {report['normalization']}. {ci}.", "", "## Headlines", ""]
  for h in report["held_out"]:
    for size in report["sizes"]:
      text = headline(report, h, size)
      if text:
        lines.append(f"* {text}")
  lines += _ablation_table(report) + _difference_table(report) + _clusters_table(report) + _groups_table(report)
  lines += _spread_table(report) + _trained_on_table(report) + _figure_lines(report) + _cells_table(report)
  return "\n".join(lines) + "\n"


def _ablation_table(report: Mapping) -> list[str]:
  ablation, conditions = _ablation(report), report["conditions"]
  top = ", ".join(f"{h}: {n}" for h, n in report["max_clusters"].items())
  rows = [[h, _size(report, size), ", ".join(map(str, ablation[h, size, "base"]["seeds"]))]
          + [reporting.format_estimate((ablation.get((h, size, c)) or {}).get("best")) for c in conditions]
          for h in report["held_out"] for size in report["sizes"] if (h, size, "base") in ablation]
  return (["", "## Held-out accuracy per condition", "",
           f"At the largest number of tuning clusters ({top}); base: the untuned model. Mean over seeds [CI].", ""]
          + reporting.markdown_table(["held-out cluster", "size", "seeds", *conditions], rows))


def _difference_table(report: Mapping) -> list[str]:
  rows = [[d["held_out"], _size(report, d["size"]), f"{d['tuned']} − {d['baseline']}", ", ".join(map(str, d["seeds"])),
           reporting.format_estimate(d, "difference"),
           "—" if d["above_zero"] is None else _share(d["above_zero"]),
           ", ".join(f"{p['difference']:+.1f}" for p in d["per_seed"])] for d in report["differences"]]
  return (["", "## Paired differences", "", "Per seed, on the same examples (each model's validation-chosen "
           "template), averaged over the cluster's datasets, then over seeds; in points.", ""]
          + reporting.markdown_table(["held-out cluster", "size", "comparison", "seeds", "difference [CI]",
                                      "replicates > 0", "per seed"], rows))


def _clusters_table(report: Mapping) -> list[str]:
  index = _index(report)
  counts = sorted({g["n_clusters"] for g in report["groups"] if g["condition"] in ("base", TUNED)})
  header = ["held-out cluster", "size"] + [f"{n} (base)" if n == 0 else str(n) for n in counts]
  rows = []
  for h in report["held_out"]:
    for size in report["sizes"]:
      entries = [index.get((h, size, "base" if n == 0 else TUNED, n)) for n in counts]
      if any(entries):
        rows.append([h, _size(report, size)] + [reporting.format_estimate(e and e["best"]) for e in entries])
  return (["", "## Number of tuning clusters", "", f"Held-out accuracy of {TUNED} models against the number of "
           "tuning clusters (0: the base model); mean over seeds [CI].", ""] + reporting.markdown_table(header, rows))


def _groups_table(report: Mapping) -> list[str]:
  rows = [[g["held_out"], _size(report, g["size"]), g["condition"], str(g["n_clusters"]),
           reporting.format_estimate(g["best"]), ", ".join(f"{p['best']:.1f}" for p in g["per_seed"]),
           reporting.format_estimate(g["template_mean"]), _answers_text(g["answers"]),
           f"{g['answers']['always_top_accuracy']:.1f}" if g["answers"] else "-"] for g in report["groups"]]
  majority = sorted({f"{g['answers']['majority_accuracy']:.1f}" for g in report["groups"] if g["answers"]})
  return (["", "## Every group", "",
           "The most common answer: the option the chosen templates give most often on the reported examples, and "
           "its share (mean over seeds); a model that gives it to every example scores the next column. "
           f"Answering every example with its most frequent target scores {' / '.join(majority) or '-'}.", ""]
          + reporting.markdown_table(["held-out cluster", "size", "condition", "tuning clusters",
                                      "best-val-template accuracy [CI]", "per seed", "template mean [CI]",
                                      "most common answer (share)", "always that answer"], rows))


def _answers_text(answers: Optional[Mapping]) -> str:
  if not answers:
    return "-"
  return f"{'/'.join(answers['top_answers'])} ({answers['top_share']:.0f}%)"


def _spread_table(report: Mapping) -> list[str]:
  rows = [[g["held_out"], _size(report, g["size"]), g["condition"], str(g["n_clusters"]), d,
           f"{s['std']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}", str(s["n_templates"])]
          for g in report["groups"] for d, s in g["template_spread"]["datasets"].items()]
  return (["", "## Template spread", "", "Per dataset, over its templates on the reported split; mean over seeds.", ""]
          + reporting.markdown_table(["held-out cluster", "size", "condition", "tuning clusters", "dataset", "std",
                                      "min", "max", "templates"], rows))


def _trained_on_table(report: Mapping) -> list[str]:
  if not report.get("trained_on"):
    return []
  lines = ["", "## What the tuned models trained on", "",
           "From each run's trained_on.json, summed over seeds: examples and target tokens after rates and "
           "packing; per task, its configured rate against its realised share of the examples.", ""]
  rows = []
  for g in report["trained_on"]:
    shares = ", ".join(f"{name} {t['configured_rate']:.2f}/{t['example_share']:.2f}" for name, t in g["tasks"].items())
    rows.append([g["size"], g["condition"], str(g["n_clusters"]), str(g["runs"]), f"{g['examples']:,}",
                 f"{g['target_tokens']:,}", f"{100 * g['packing_efficiency']:.1f}%", shares])
  return lines + reporting.markdown_table(
      ["size", "condition", "clusters", "runs", "examples", "target tokens", "packing", "task: rate/share"], rows)


def _figure_lines(report: Mapping) -> list[str]:
  titles = {"conditions": "Held-out accuracy per condition", "clusters": "Held-out accuracy against the number of "
            "tuning clusters", "scale": f"Held-out gain ({TUNED} − base) against model size"}
  lines = ["", "## Figures", ""]
  for name, figure in report["figures"].items():
    if figure["file"]:
      lines += [f"![{titles[name]}]({figure['file']})", ""]
    else:
      lines += [f"* {titles[name]}: skipped, {figure['skipped']}.", ""]
  return lines[:-1]


def _cells_table(report: Mapping) -> list[str]:
  rows = [[name, c["size"], str(c["seed"]), c["condition"], c["held_out"], str(c["n_clusters"]), str(c["step"]),
           reporting.format_estimate(c["best"])] for name, c in report["cells"].items()]
  return (["", "## Cells", "", "Each cell's newest step; CIs over examples only.", ""]
          + reporting.markdown_table(["cell", "size", "seed", "condition", "held-out cluster", "tuning clusters",
                                      "step", "accuracy [CI]"], rows))


# Figures (matplotlib with the Agg canvas, through `reporting.new_figure`).


def plot_conditions(report: Mapping, path: str) -> None:
  """The paper's ablation bars: per size a panel, per held-out cluster a group, per condition a bar with its CI."""
  ablation, held_out, conditions = _ablation(report), report["held_out"], report["conditions"]
  sizes = list(report["sizes"])
  figure = reporting.new_figure(max(5.0, len(sizes) * (1.5 + 0.4 * len(held_out) * len(conditions))), 4.0)
  panels = figure.subplots(1, len(sizes), sharey=True, squeeze=False)[0]
  width = 0.8 / len(conditions)
  for axes, size in zip(panels, sizes):
    for i, condition in enumerate(conditions):
      heights, errors = reporting.error_bars([(ablation.get((h, size, condition)) or {}).get("best") for h in held_out])
      xs = np.arange(len(held_out)) + (i - (len(conditions) - 1) / 2) * width
      axes.bar(xs, heights, width, yerr=errors, capsize=3, label=condition, color=f"C{CONDITIONS.index(condition)}")
    axes.set_xticks(np.arange(len(held_out)), held_out)
    axes.set_xlabel("held-out cluster")
    axes.set_title(_size(report, size), fontsize=10)
  panels[0].set_ylabel("held-out accuracy (%)")
  panels[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  figure.suptitle("Zero-shot accuracy on the held-out cluster per condition", fontsize=11)
  figure.tight_layout()
  figure.savefig(path)


def plot_clusters(report: Mapping, path: str) -> None:
  """Accuracy against the number of tuning clusters (0: base): a panel per held-out cluster, a line per size."""
  index, top = _index(report), report["max_clusters"]
  held_out = [h for h in report["held_out"] if any(
      g["held_out"] == h and g["condition"] == TUNED and g["n_clusters"] < top[h] for g in report["groups"])]
  figure = reporting.new_figure(max(5.0, 4.5 * len(held_out)), 4.0)
  panels = figure.subplots(1, len(held_out), sharey=True, squeeze=False)[0]
  for axes, h in zip(panels, held_out):
    counts = sorted({g["n_clusters"] for g in report["groups"]
                     if g["held_out"] == h and g["condition"] in ("base", TUNED)})
    for i, size in enumerate(report["sizes"]):
      points = [(n, index[h, size, "base" if n == 0 else TUNED, n]["best"]) for n in counts
                if (h, size, "base" if n == 0 else TUNED, n) in index]
      if points:
        heights, errors = reporting.error_bars([p[1] for p in points])
        shift = 0.04 * (i - (len(report["sizes"]) - 1) / 2) * max(1, counts[-1])  # error bars side by side
        axes.errorbar([p[0] + shift for p in points], heights, yerr=errors, marker="o", capsize=3,
                      label=_size(report, size))
    axes.set_xticks(counts)
    axes.set_xlabel("number of tuning clusters (0: base)")
    axes.set_title(f"held out: {h}", fontsize=10)
    axes.legend(fontsize=8)
  panels[0].set_ylabel("held-out accuracy (%)")
  figure.tight_layout()
  figure.savefig(path)


def plot_scale(report: Mapping, path: str) -> None:
  """The held-out gain (instructions - base, most tuning clusters) against parameters (log); a line per cluster."""
  figure = reporting.new_figure(6.0, 4.0)
  axes = figure.add_subplot()
  for h in report["held_out"]:
    diffs = sorted((d for d in report["differences"] if d["held_out"] == h and d["baseline"] == "base"),
                   key=lambda d: d["params"])
    if diffs:
      heights, errors = reporting.error_bars([{"accuracy": d["difference"], "ci": d["ci"]} for d in diffs])
      axes.errorbar([d["params"] for d in diffs], heights, yerr=errors, marker="o", capsize=3, label=h)
  axes.axhline(0.0, color="gray", linewidth=0.8)
  axes.set_xscale("log")
  axes.set_xticks(list(report["sizes"].values()), [f"{s}\n{format_params(p)}" for s, p in report["sizes"].items()])
  axes.minorticks_off()
  axes.set_xlabel("model parameters")
  axes.set_ylabel(f"{TUNED} − base (points)")
  axes.set_title("Held-out gain from instruction tuning against model size", fontsize=10)
  axes.legend(fontsize=8, title="held-out cluster", title_fontsize=8)
  figure.tight_layout()
  figure.savefig(path)


PLOTS = {"conditions": plot_conditions, "clusters": plot_clusters, "scale": plot_scale}


def write(manifest: Mapping, output_dir: str, settings: reporting.Settings = reporting.Settings()) -> dict:
  """Builds the report and writes report.json, report.md and the figures it has data for; returns the report."""
  report = build(manifest, settings)
  try:
    os.makedirs(output_dir, exist_ok=True)
    files.write_json(os.path.join(output_dir, "report.json"), report)
    with files.replacing(os.path.join(output_dir, "report.md")) as f:
      f.write(markdown(report))
    for name, figure in report["figures"].items():
      if figure["file"]:
        PLOTS[name](report, os.path.join(output_dir, figure["file"]))
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFullError(f"no space left on device while writing the study report in {output_dir}; the finished "
                          "jobs are kept: free some space and rerun the same command") from e
    raise UserError(f"cannot write the study report to {output_dir}: {e.strerror or e}") from e
  return report
