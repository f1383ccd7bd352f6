"""The study report's figures: the ablation bars, accuracy against the number of tuning clusters, and the
gain against model size (matplotlib with the Agg canvas, through `plots.new_figure`)."""

from typing import Mapping

import numpy as np

from flan_jax.reports.plots import error_bars, new_figure
from flan_jax.reports.study_manifest import CONDITIONS, TUNED
from flan_jax.reports.study_markdown import ablation_groups, format_params, group_index, size_label


def plot_conditions(report: Mapping, path: str) -> None:
  """The paper's ablation bars: per size a panel, per held-out cluster a group, per condition a bar with its CI."""
  ablation, held_out, conditions = ablation_groups(report), report["held_out"], report["conditions"]
  sizes = list(report["sizes"])
  figure = new_figure(max(5.0, len(sizes) * (1.5 + 0.4 * len(held_out) * len(conditions))), 4.0)
  panels = figure.subplots(1, len(sizes), sharey=True, squeeze=False)[0]
  width = 0.8 / len(conditions)
  for axes, size in zip(panels, sizes):
    for i, condition in enumerate(conditions):
      heights, errors = error_bars([(ablation.get((h, size, condition)) or {}).get("best") for h in held_out])
      xs = np.arange(len(held_out)) + (i - (len(conditions) - 1) / 2) * width
      axes.bar(xs, heights, width, yerr=errors, capsize=3, label=condition, color=f"C{CONDITIONS.index(condition)}")
    axes.set_xticks(np.arange(len(held_out)), held_out)
    axes.set_xlabel("held-out cluster")
    axes.set_title(size_label(report, size), fontsize=10)
  panels[0].set_ylabel("held-out accuracy (%)")
  panels[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  figure.suptitle("Zero-shot accuracy on the held-out cluster per condition", fontsize=11)
  figure.tight_layout()
  figure.savefig(path)


def plot_clusters(report: Mapping, path: str) -> None:
  """Accuracy against the number of tuning clusters (0: base): a panel per held-out cluster, a line per size."""
  index, top = group_index(report), report["max_clusters"]
  held_out = [h for h in report["held_out"] if any(
      g["held_out"] == h and g["condition"] == TUNED and g["n_clusters"] < top[h] for g in report["groups"])]
  figure = new_figure(max(5.0, 4.5 * len(held_out)), 4.0)
  panels = figure.subplots(1, len(held_out), sharey=True, squeeze=False)[0]
  for axes, h in zip(panels, held_out):
    counts = sorted({g["n_clusters"] for g in report["groups"]
                     if g["held_out"] == h and g["condition"] in ("base", TUNED)})
    for i, size in enumerate(report["sizes"]):
      points = [(n, index[h, size, "base" if n == 0 else TUNED, n]["best"]) for n in counts
                if (h, size, "base" if n == 0 else TUNED, n) in index]
      if points:
        heights, errors = error_bars([p[1] for p in points])
        shift = 0.04 * (i - (len(report["sizes"]) - 1) / 2) * max(1, counts[-1])  # error bars side by side
        axes.errorbar([p[0] + shift for p in points], heights, yerr=errors, marker="o", capsize=3,
                      label=size_label(report, size))
    axes.set_xticks(counts)
    axes.set_xlabel("number of tuning clusters (0: base)")
    axes.set_title(f"held out: {h}", fontsize=10)
    axes.legend(fontsize=8)
  panels[0].set_ylabel("held-out accuracy (%)")
  figure.tight_layout()
  figure.savefig(path)


def plot_scale(report: Mapping, path: str) -> None:
  """The held-out gain (instructions - base, most tuning clusters) against parameters (log); a line per cluster."""
  figure = new_figure(6.0, 4.0)
  axes = figure.add_subplot()
  for h in report["held_out"]:
    diffs = sorted((d for d in report["differences"] if d["held_out"] == h and d["baseline"] == "base"),
                   key=lambda d: d["params"])
    if diffs:
      heights, errors = error_bars([{"accuracy": d["difference"], "ci": d["ci"]} for d in diffs])
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
