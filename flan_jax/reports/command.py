"""The report command's arguments and outputs: `python -m flan_jax.report`'s flags (as one-line errors,
not usage text), RUN=PATH pairs, and the files one report writes (report.json, report.md and charts).
Every path may be local or in a bucket (gs://bucket/path, s3://bucket/path; flan_jax.storage).
"""

import argparse
import re
from typing import Sequence

from flan_jax import storage
from flan_jax.errors import UserError
from flan_jax.reports import output, plots
from flan_jax.reports.markdown import markdown
from flan_jax.reports.records import NORMALIZATIONS

_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes are one-line UserErrors instead of usage text."""

  def error(self, message: str):
    raise UserError(f"{message} (see python -m flan_jax.report --help)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = _Parser(prog="python -m flan_jax.report", allow_abbrev=False,
                   description="FLAN-style report (tables, bootstrap CIs, charts) from eval predictions.")
  parser.add_argument("--predictions", nargs="+", action="extend", required=True, metavar="RUN=PATH",
                      help="a run's predictions .jsonl file, or a directory holding predictions_*.jsonl "
                           "(local, or gs://bucket/path, s3://bucket/path)")
  parser.add_argument("--output_dir", required=True,
                      help="where report.json, report.md and the PNGs go (local, or in a bucket)")
  parser.add_argument("--baseline", help="the run the others are compared with (paired bootstrap)")
  parser.add_argument("--held_out", help="the held-out cluster, listed first (inferred when only one)")
  parser.add_argument("--normalization", default="none", help=", ".join(NORMALIZATIONS))
  parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per CI (0: no CIs)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--confidence", type=float, default=0.95)
  args = parser.parse_args(argv)
  storage.check(args.output_dir, "--output_dir")  # before any work: a bucket URL flan_jax cannot use is one line
  return args


def parse_runs(specs: Sequence[str]) -> dict[str, list[str]]:
  """RUN=PATH pairs; a run named several times reads every path given (e.g. several steps)."""
  runs = {}
  for spec in specs:
    name, eq, path = spec.partition("=")
    if not eq or not path:
      raise UserError(f"--predictions {spec}: write RUN=PATH, e.g. tuned=/runs/tuned")
    if not _RUN_NAME.fullmatch(name):
      raise UserError(f"--predictions {spec}: name runs with letters, digits, '_', '.' or '-'")
    runs.setdefault(name, []).append(storage.check(path, f"--predictions {name}"))
  return runs


def write_outputs(report: dict, output_dir: str) -> list[str]:
  """report.json, report.md, clusters.png, templates.png and steps_<run>.png for runs with several steps."""
  figures = {"clusters.png": plots.plot_clusters, "templates.png": plots.plot_templates}
  for run, entry in report["runs"].items():
    if len(entry["steps"]) > 1:
      figures[f"steps_{run}.png"] = lambda report, path, run=run: plots.plot_steps(report, run, path)
  return output.write_files(output_dir, report, markdown, figures,
                             disk_full=f"no space left on device while writing the report in --output_dir "
                                       f"{output_dir}; free some space and rerun the same command",
                             refused=f"cannot write to --output_dir {output_dir}")
