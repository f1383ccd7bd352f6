"""Report command: FLAN's tables, bootstrap CIs and charts from saved eval predictions (it runs no model).

`python -m flan_jax.report --predictions RUN=PATH [RUN=PATH ...] --output_dir DIR [--baseline RUN] ...`
"""

import sys
from typing import Optional, Sequence

from flan_jax import reports
from flan_jax.errors import DiskFullError, UserError, first_line
from flan_jax.reports import command


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; a mistake the user can fix is one line on stderr and exit status 2 (a full disk: 5)."""
  try:
    args = command.parse_args(sys.argv[1:] if argv is None else argv)
    settings = reports.Settings(args.normalization, args.bootstrap, args.seed, args.confidence)
    reports.check_settings(settings)
    runs = [reports.load_run(name, paths) for name, paths in command.parse_runs(args.predictions).items()]
    report = reports.build_report(runs, settings, baseline=args.baseline, held_out=args.held_out)
    paths = command.write_outputs(report, args.output_dir)
  except (UserError, DiskFullError) as e:
    print(f"error: {first_line(e)}", file=sys.stderr)
    return 5 if isinstance(e, DiskFullError) else 2
  print(reports.markdown_summary(report))
  print()
  for path in paths:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
