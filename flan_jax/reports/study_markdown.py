"""The study report as markdown: headlines, tables and the figures' links (`markdown`), and the labels
and look-ups its figures share."""

from typing import Mapping, Optional

from flan_jax.reports.markdown import count, format_estimate, markdown_table
from flan_jax.reports.study_manifest import TUNED


def format_params(n: int) -> str:
  """E.g. 3.5M, 137B."""
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return str(n)


def size_label(report: Mapping, size: str) -> str:
  """E.g. 'small (3.5M)'."""
  return f"{size} ({format_params(report['sizes'][size])})"


def group_index(report: Mapping) -> dict:
  """(held_out, size, condition, n_clusters) -> the group."""
  return {(g["held_out"], g["size"], g["condition"], g["n_clusters"]): g for g in report["groups"]}


def ablation_groups(report: Mapping) -> dict:
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
  ablation = ablation_groups(report)
  tuned, base = ablation.get((h, size, TUNED)), ablation.get((h, size, "base"))
  if base is None:
    return None
  diff = next((d for d in report["differences"] if (d["held_out"], d["size"], d["baseline"]) == (h, size, "base")),
              None)
  seeds = count(base["best"]["n_seeds"], "seed")
  text = f"{h}, {size_label(report, size)}, {seeds}: "
  if tuned is None or diff is None:
    return text + f"base {format_estimate(base['best'])} (no {TUNED} model)"
  return (text + f"{TUNED} {format_estimate(tuned['best'])} vs base {format_estimate(base['best'])}"
          f": {_difference_text(diff)}")


def markdown(report: Mapping) -> str:
  """The headlines, the tables and the figures (or why each is skipped)."""
  ci = (f"{report['confidence'] * 100:g}% percentile CIs from a hierarchical bootstrap (seeds resampled, then "
        f"examples within datasets; {report['bootstrap']} replicates, seed {report['seed']})" if report["bootstrap"]
        else "no CIs (bootstrap 0)")
  lines = [f"# FLAN study report{': ' + report['name'] if report.get('name') else ''}", "",
           f"{count(len(report['cells']), 'cell')}: sizes {', '.join(size_label(report, s) for s in report['sizes'])}; "
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
  ablation, conditions = ablation_groups(report), report["conditions"]
  top = ", ".join(f"{h}: {n}" for h, n in report["max_clusters"].items())
  rows = [[h, size_label(report, size), ", ".join(map(str, ablation[h, size, "base"]["seeds"]))]
          + [format_estimate((ablation.get((h, size, c)) or {}).get("best")) for c in conditions]
          for h in report["held_out"] for size in report["sizes"] if (h, size, "base") in ablation]
  return (["", "## Held-out accuracy per condition", "",
           f"At the largest number of tuning clusters ({top}); base: the untuned model. Mean over seeds [CI].", ""]
          + markdown_table(["held-out cluster", "size", "seeds", *conditions], rows))


def _difference_table(report: Mapping) -> list[str]:
  rows = [[d["held_out"], size_label(report, d["size"]), f"{d['tuned']} − {d['baseline']}",
           ", ".join(map(str, d["seeds"])), format_estimate(d, "difference"),
           "—" if d["above_zero"] is None else _share(d["above_zero"]),
           ", ".join(f"{p['difference']:+.1f}" for p in d["per_seed"])] for d in report["differences"]]
  return (["", "## Paired differences", "", "Per seed, on the same examples (each model's validation-chosen "
           "template), averaged over the cluster's datasets, then over seeds; in points.", ""]
          + markdown_table(["held-out cluster", "size", "comparison", "seeds", "difference [CI]",
                            "replicates > 0", "per seed"], rows))


def _clusters_table(report: Mapping) -> list[str]:
  index = group_index(report)
  counts = sorted({g["n_clusters"] for g in report["groups"] if g["condition"] in ("base", TUNED)})
  header = ["held-out cluster", "size"] + [f"{n} (base)" if n == 0 else str(n) for n in counts]
  rows = []
  for h in report["held_out"]:
    for size in report["sizes"]:
      entries = [index.get((h, size, "base" if n == 0 else TUNED, n)) for n in counts]
      if any(entries):
        rows.append([h, size_label(report, size)] + [format_estimate(e and e["best"]) for e in entries])
  return (["", "## Number of tuning clusters", "", f"Held-out accuracy of {TUNED} models against the number of "
           "tuning clusters (0: the base model); mean over seeds [CI].", ""] + markdown_table(header, rows))


def _groups_table(report: Mapping) -> list[str]:
  rows = [[g["held_out"], size_label(report, g["size"]), g["condition"], str(g["n_clusters"]),
           format_estimate(g["best"]), ", ".join(f"{p['best']:.1f}" for p in g["per_seed"]),
           format_estimate(g["template_mean"]), _answers_text(g["answers"]),
           f"{g['answers']['always_top_accuracy']:.1f}" if g["answers"] else "-"] for g in report["groups"]]
  majority = sorted({f"{g['answers']['majority_accuracy']:.1f}" for g in report["groups"] if g["answers"]})
  return (["", "## Every group", "",
           "The most common answer: the option the chosen templates give most often on the reported examples, and "
           "its share (mean over seeds); a model that gives it to every example scores the next column. "
           f"Answering every example with its most frequent target scores {' / '.join(majority) or '-'}.", ""]
          + markdown_table(["held-out cluster", "size", "condition", "tuning clusters",
                            "best-val-template accuracy [CI]", "per seed", "template mean [CI]",
                            "most common answer (share)", "always that answer"], rows))


def _answers_text(answers: Optional[Mapping]) -> str:
  if not answers:
    return "-"
  return f"{'/'.join(answers['top_answers'])} ({answers['top_share']:.0f}%)"


def _spread_table(report: Mapping) -> list[str]:
  rows = [[g["held_out"], size_label(report, g["size"]), g["condition"], str(g["n_clusters"]), d,
           f"{s['std']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}", str(s["n_templates"])]
          for g in report["groups"] for d, s in g["template_spread"]["datasets"].items()]
  return (["", "## Template spread", "", "Per dataset, over its templates on the reported split; mean over seeds.", ""]
          + markdown_table(["held-out cluster", "size", "condition", "tuning clusters", "dataset", "std",
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
  return lines + markdown_table(
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
           format_estimate(c["best"])] for name, c in report["cells"].items()]
  return (["", "## Cells", "", "Each cell's newest step; CIs over examples only.", ""]
          + markdown_table(["cell", "size", "seed", "condition", "held-out cluster", "tuning clusters",
                            "step", "accuracy [CI]"], rows))
