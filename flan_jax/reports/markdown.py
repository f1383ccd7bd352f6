"""The FLAN report as markdown (`markdown`; `markdown_summary` is what the command prints), and the
table and estimate formats the study report shares."""

from typing import Mapping, Optional, Sequence


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


def count(n: int, noun: str) -> str:
  """E.g. '1 dataset', '3 seeds'."""
  return f"{n} {noun}" + ("" if n == 1 else "s")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A markdown table's lines."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def cluster_label(report: Mapping, cluster: str) -> str:
  """The cluster's name, marked when it is the held-out one."""
  return f"{cluster} (held out)" if cluster == report["held_out"] else cluster


def _cluster_table(report: Mapping, quantity: str) -> list[str]:
  runs, comparisons = report["runs"], report["comparisons"]
  header = ["cluster"] + list(runs) + [f"{r} − {report['baseline']}" for r in comparisons]
  rows = []
  for cluster in report["clusters"]:
    row = [cluster_label(report, cluster)]
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
    lines.append(f"* {name}: step {entry['step']}{steps}, {count(len(entry['datasets']), 'dataset')}")
  lines += ["", "## Clusters", "", "Best-validation-template accuracy: the template is chosen on validation, "
            "its test accuracy is reported; a cluster is the mean over its datasets.", ""]
  lines += _cluster_table(report, "best")
  lines += ["", "Template mean: the mean accuracy over templates, then over the cluster's datasets.", ""]
  lines += _cluster_table(report, "template_mean")
  for run, comparison in report["comparisons"].items():
    lines += ["", f"## {run} against {report['baseline']} (paired bootstrap)", ""]
    for cluster, entry in comparison["clusters"].items():
      if entry["best"]:
        lines.append(f"* {cluster_label(report, cluster)}: "
                     f"{sentence(run, report['baseline'], entry['best'], report['confidence'])} "
                     f"(best-validation-template accuracy, {count(entry['best']['n_datasets'], 'dataset')})")
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
