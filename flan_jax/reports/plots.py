"""The FLAN report's charts, and the figure helpers the study report shares.

matplotlib is imported only when a figure is drawn (`new_figure`), with the Agg canvas and without
pyplot's global state, so importing the reports costs no matplotlib.
"""

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from flan_jax.reports.markdown import cluster_label


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
  axes.set_xticks(np.arange(len(clusters)), [cluster_label(report, c).replace(" (", "\n(") for c in clusters])
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
    axes.plot(steps, [p[1]["accuracy"] for p in points], marker="o", label=cluster_label(report, cluster))
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
