"""Report command: FLAN's tables, bootstrap CIs and charts from saved eval predictions (it runs no model).

`python -m flan_jax.report --predictions RUN=PATH [RUN=PATH ...] --output_dir DIR [--baseline RUN] ...`
"""

import argparse
import errno
import os
import re
import sys
from typing import Optional, Sequence

from flan_jax import files
from flan_jax.errors import DiskFullError, UserError
from flan_jax.reports import reporting

_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes are one-line UserErrors instead of usage text."""

  def error(self, message: str):
    raise UserError(f"{message} (see python -m flan_jax.report --help)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = _Parser(prog="python -m flan_jax.report", allow_abbrev=False,
                   description="FLAN-style report (tables, bootstrap CIs, charts) from eval predictions.")
  parser.add_argument("--predictions", nargs="+", action="extend", required=True, metavar="RUN=PATH",
                      help="a run's predictions .jsonl file, or a directory holding predictions_*.jsonl")
  parser.add_argument("--output_dir", required=True, help="where report.json, report.md and the PNGs go")
  parser.add_argument("--baseline", help="the run the others are compared with (paired bootstrap)")
  parser.add_argument("--held_out", help="the held-out cluster, listed first (inferred when only one)")
  parser.add_argument("--normalization", default="none", help=", ".join(reporting.NORMALIZATIONS))
  parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per CI (0: no CIs)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--confidence", type=float, default=0.95)
  return parser.parse_args(argv)


def parse_runs(specs: Sequence[str]) -> dict[str, list[str]]:
  """RUN=PATH pairs; a run named several times reads every path given (e.g. several steps)."""
  runs = {}
  for spec in specs:
    name, eq, path = spec.partition("=")
    if not eq or not path:
      raise UserError(f"--predictions {spec}: write RUN=PATH, e.g. tuned=/runs/tuned")
    if not _RUN_NAME.fullmatch(name):
      raise UserError(f"--predictions {spec}: name runs with letters, digits, '_', '.' or '-'")
    runs.setdefault(name, []).append(path)
  return runs


def write_outputs(report: dict, output_dir: str) -> list[str]:
  """report.json, report.md, clusters.png, templates.png and steps_<run>.png for runs with several steps."""
  try:
    return _write(report, output_dir)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFullError(f"no space left on device while writing the report in --output_dir {output_dir}; free "
                          "some space and rerun the same command") from e
    raise UserError(f"cannot write to --output_dir {output_dir}: {e.strerror or e}") from e


def _write(report: dict, output_dir: str) -> list[str]:
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, name) for name in ("report.json", "report.md", "clusters.png", "templates.png")]
  files.write_json(paths[0], report)
  with files.replacing(paths[1]) as f:
    f.write(reporting.markdown(report))
  reporting.plot_clusters(report, paths[2])
  reporting.plot_templates(report, paths[3])
  for run, entry in report["runs"].items():
    if len(entry["steps"]) > 1:
      paths.append(os.path.join(output_dir, f"steps_{run}.png"))
      reporting.plot_steps(report, run, paths[-1])
  return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; a mistake the user can fix is one line on stderr and exit status 2."""
  try:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = reporting.Settings(args.normalization, args.bootstrap, args.seed, args.confidence)
    reporting.check_settings(settings)
    runs = [reporting.load_run(name, paths) for name, paths in parse_runs(args.predictions).items()]
    report = reporting.build_report(runs, settings, baseline=args.baseline, held_out=args.held_out)
    paths = write_outputs(report, args.output_dir)
  except UserError as e:
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2
  except DiskFullError as e:
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 5
  print(reporting.markdown_summary(report))
  print()
  for path in paths:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
