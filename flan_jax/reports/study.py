"""The report of a FLAN-paper study: model sizes x seeds x conditions x held-out clusters x numbers of tuning clusters.

Reads each evaluated cell's zero-shot predictions (`records.load_run`, `summary.summarize`; it never runs a
model), bootstraps over seeds and examples (`stats.hierarchical`); see `build`. `write` writes report.json,
report.md (study_markdown) and the figures it has data for (study_plots).
"""

import collections
import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from flan_jax.errors import UserError, first_line
from flan_jax.reports.output import write_files
from flan_jax.reports.records import best, load_run
from flan_jax.reports.stats import (
  Estimate,
  Settings,
  above_zero,
  as_json,
  average,
  check_settings,
  estimate,
  hierarchical,
  paired_difference,
)
from flan_jax.reports.study_manifest import BASELINES, CELL_FIELDS, CONDITIONS, TUNED, cell_key, check_manifest
from flan_jax.reports.study_markdown import markdown
from flan_jax.reports.study_plots import PLOTS
from flan_jax.reports.summary import QUANTITIES, summarize

FIGURES = {"conditions": "conditions.png", "clusters": "clusters.png", "scale": "scale.png"}


@dataclasses.dataclass
class _Cell:
  """One evaluated model: its manifest entry, its JSON entry and what the bootstrap needs."""
  spec: Mapping[str, Any]
  entry: dict
  examples: dict  # dataset of the held-out cluster -> {example_id: score} (chosen template, reported split)
  estimates: dict  # quantity -> cluster Estimate (mean over its datasets, examples resampled within each)


# Cells.


def load_cell(spec: Mapping, settings: Settings) -> _Cell:
  """Summarizes the cell's newest step (`summary.summarize`) and bootstraps its held-out cluster's accuracy.

  The example-level replicates are keyed by the cell's id, so different cells (seeds) resample independently.
  """
  name, held_out = spec["id"], spec["held_out"]
  try:
    run = load_run(name, [spec["eval_dir"]])
    step = max(run.steps)
    summary = summarize(name, run.steps[step], dataclasses.replace(settings, bootstrap=0))
  except UserError as e:
    raise UserError(f"study cell {name}: {first_line(e)}") from e
  names = [d for d, entry in summary.datasets.items() if entry["cluster"] == held_out and "best" in summary.examples[d]]
  if not names:
    clusters = sorted({entry["cluster"] for entry in summary.datasets.values()})
    raise UserError(f"study cell {name}: {spec['eval_dir']} holds no accuracy of held-out cluster {held_out} with a "
                    f"template chosen on validation (clusters there: {', '.join(clusters)}); evaluate the cell on "
                    "its held-out cluster's validation and test splits")
  per_dataset = {d: {q: estimate(summary.examples[d][q].values(), f"{name}/{d}/{q}", settings)
                     for q in QUANTITIES} for d in names}
  estimates = {q: average([per_dataset[d][q] for d in names]) for q in QUANTITIES}
  datasets = {}
  for d in names:
    spread = summary.datasets[d]["template_mean"]
    datasets[d] = {"best_template": summary.datasets[d]["best_template"],
                   "reported_split": summary.datasets[d]["reported_split"],
                   "best": as_json(per_dataset[d]["best"], settings),
                   "template_mean": {**as_json(per_dataset[d]["template_mean"], settings),
                                     **{k: spread[k] for k in ("std", "min", "max", "n_templates")}},
                   "notes": summary.datasets[d]["notes"]}
  left_out = [d for d, e in summary.datasets.items() if e["cluster"] == held_out and d not in names]
  chosen = {d: (datasets[d]["best_template"], datasets[d]["reported_split"]) for d in names}
  entry = {**{k: spec[k] for k in CELL_FIELDS if k != "id"}, "step": step, "steps": sorted(run.steps),
           "datasets": datasets, "left_out": left_out,  # held-out datasets without a template chosen on validation
           "answers": answer_stats(run.steps[step], chosen, settings.normalization)}
  for q in QUANTITIES:
    entry[q] = {**as_json(estimates[q], settings), "n_datasets": len(names)}
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
    answers[r["options"][best(scores)]] += 1
    targets.setdefault(r["dataset"], []).append(r["target"])
  if not answers:
    return None
  top, count = answers.most_common(1)[0]
  share = lambda values, answer: values.count(answer) / len(values)
  return {"top_answer": top, "top_share": 100 * count / sum(answers.values()),
          "always_top_accuracy": 100 * float(np.mean([share(t, top) for t in targets.values()])),
          "majority_accuracy": 100 * float(np.mean([max(share(t, a) for a in set(t)) for t in targets.values()]))}


# The report.


def build(manifest: Mapping, settings: Settings = Settings()) -> dict:
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
  check_settings(settings)
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


def _groups(cells: Sequence[_Cell], sizes: Mapping[str, int], settings: Settings) -> list[dict]:
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
                           **{q: c.entry[q]["accuracy"] for q in QUANTITIES}} for c in members]}
    for q in QUANTITIES:
      est = hierarchical([c.estimates[q] for c in members], f"{h}/{size}/{condition}/{n}/{q}/seeds", settings)
      group[q] = {**as_json(est, settings), "n_seeds": len(members)}
    group["template_spread"] = _template_spread(members)
    answers = [c.entry["answers"] for c in members if c.entry["answers"]]
    means = ("top_share", "always_top_accuracy", "majority_accuracy")
    group["answers"] = answers and {"top_answers": sorted({a["top_answer"] for a in answers}),
                                    **{k: float(np.mean([a[k] for a in answers])) for k in means}}
    groups.append(group)
  return groups


def _template_spread(members: Sequence[_Cell]) -> dict:
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
                 settings: Settings) -> list[dict]:
  index = {cell_key(c.spec): c for c in cells}
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
                settings: Settings) -> dict:
  per_seed, estimates = [], []
  for tuned, base in pairs:
    est = paired_cluster_difference(tuned, base, settings)
    estimates.append(est)
    per_seed.append({"seed": tuned.spec["seed"], "tuned": tuned.spec["id"], "baseline": base.spec["id"],
                     "difference": 100 * est.value})
  est = hierarchical(estimates, f"{h}/{size}/{TUNED}-{baseline}/{top}/seeds", settings)
  return {"held_out": h, "size": size, "params": params, "tuned": TUNED, "baseline": baseline, "n_clusters": top,
          "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
          **as_json(est, settings, "difference"), "n_seeds": len(pairs),
          "n_datasets": len(pairs[0][0].examples), "above_zero": above_zero(est)}


def paired_cluster_difference(tuned: _Cell, base: _Cell, settings: Settings) -> Estimate:
  """tuned - base on the held-out cluster: per dataset over the same example ids, then averaged over datasets.

  Each model's score of an example is that of the template it chose on validation (they may choose different
  ones); the examples are resampled together (`stats.paired_difference`).
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
    estimates.append(paired_difference(scores, base.examples[d], f"{a}-{b}/{d}/best/paired", settings))
  return average(estimates)


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


def write(manifest: Mapping, output_dir: str, settings: Settings = Settings()) -> dict:
  """Builds the report and writes report.json, report.md and the figures it has data for; returns the report."""
  report = build(manifest, settings)
  figures = {figure["file"]: PLOTS[name] for name, figure in report["figures"].items() if figure["file"]}
  write_files(output_dir, report, markdown, figures,
              disk_full=f"no space left on device while writing the study report in {output_dir}; the finished "
                        "jobs are kept: free some space and rerun the same command",
              refused=f"cannot write the study report to {output_dir}")
  return report
