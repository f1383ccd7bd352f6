"""What the TPU VM and SLURM launchers share: the job's own flags (everything after `--`),
the shell-quoted command line that runs the job, and printing or running a list of commands.
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from typing import Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Makefile is where the t5 version is pinned (`T5_VERSION := x`); the launchers read it there.
MAKEFILE = os.path.join(REPO_ROOT, "Makefile")
_T5_VERSION = re.compile(r"^T5_VERSION\s*:?=\s*(\S+)\s*$", re.MULTILINE)
MODULES = ("flan_jax.train", "flan_jax.eval")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def t5_version(makefile: str = MAKEFILE) -> str:
  """The t5 version the Makefile pins with its `T5_VERSION := x` line."""
  try:
    with open(makefile) as f:
      text = f.read()
  except OSError as e:
    raise ValueError(f"cannot read the t5 version from {makefile}: {e}") from e
  match = _T5_VERSION.search(text)
  if not match:
    raise ValueError(f"{makefile} has no `T5_VERSION := x` line (the t5 version to install)")
  return match.group(1)


def add_job_flags(parser: argparse.ArgumentParser, python: str) -> None:
  """Adds the flags both launchers take for the job itself, and --dry-run."""
  parser.add_argument("--module", choices=MODULES, default=MODULES[0],
                      help="the binary to run (default %(default)s)")
  parser.add_argument("--python", default=python,
                      help="the python that runs it on the machines (default %(default)s)")
  parser.add_argument("--no_multihost", action="store_true",
                      help="do not append --multihost to the job's flags")
  parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                      help="an environment variable for the job (repeatable)")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the commands instead of running them")


def split_job_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits argv at the first `--` into (the launcher's flags, the job's flags)."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
  """Parses the launcher's flags (args.job_args holds the job's); errors exit via argparse."""
  own, job = split_job_args(argv)
  args = parser.parse_args(own)
  if "--dry-run" in job or "--dry_run" in job:
    parser.error("--dry-run belongs before `--`; after it, it would go to the job")
  for item in args.env:
    name, sep, _ = item.partition("=")
    if not sep or not _ENV_NAME.match(name):
      parser.error(f"--env wants NAME=VALUE, got {item!r}")
  args.job_args = job
  return args


def require_job_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """A job needs flags after `--`, at least one of them a --gin_file."""
  if not any(a == "--gin_file" or a.startswith("--gin_file=") for a in args.job_args):
    parser.error("put the job's flags after `--`, with at least one --gin_file=...")


def job_argv(args: argparse.Namespace) -> list[str]:
  """The job's argv on one machine: python -u -m MODULE <job flags> [--multihost]."""
  argv = [args.python, "-u", "-m", args.module, *args.job_args]
  if not args.no_multihost and "--multihost" not in args.job_args:
    argv.append("--multihost")
  return argv


def env_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
  """The --env flags as (name, value) pairs, in the order given."""
  return [tuple(item.split("=", 1)) for item in args.env]


def quote(word: str) -> str:
  """Quotes one word for a POSIX shell, preferring the form a person would type.

  A word holding a single quote goes in double quotes (with \\ and " escaped) rather than
  as a chain of '"'"' pieces; words with $, ` or ! keep shlex.quote's single quotes, which
  nothing expands (and which shlex.split reads the same way a shell does).
  """
  if "'" not in word or any(c in word for c in "$`!"):
    return shlex.quote(word)
  return '"' + re.sub(r'([\\"])', r"\\\1", word) + '"'


def join(argv: Sequence[str]) -> str:
  """One argv as a shell command line; shlex.split gives the argv back."""
  return " ".join(quote(word) for word in argv)


def shell_join(*commands: Sequence[str]) -> str:
  """Quotes each argv for a POSIX shell and chains them with `&&`."""
  return " && ".join(join(c) for c in commands)


@dataclasses.dataclass
class Step:
  """One command; `otherwise` runs only if it fails (`argv || otherwise`)."""
  argv: list[str]
  otherwise: Optional[list[str]] = None
  always: bool = False  # runs even after an earlier step failed (cleanup)

  def line(self) -> str:
    text = join(self.argv)
    return f"{text} || {join(self.otherwise)}" if self.otherwise else text


def _call(argv: list[str]) -> int:
  print("+ " + join(argv), file=sys.stderr, flush=True)
  try:
    return subprocess.call(argv)
  except FileNotFoundError:
    print(f"error: {argv[0]} not found on PATH", file=sys.stderr)
    return 127


def run_steps(steps: Sequence[Step], dry_run: bool) -> int:
  """Prints the steps (dry run) or runs them in order; returns the first non-zero exit status.

  After a failure (or Ctrl-C) only the steps marked `always` still run.
  """
  if dry_run:
    for step in steps:
      print(step.line())
    return 0
  status = 0
  for step in steps:
    if status and not step.always:
      continue
    try:
      rc = _call(step.argv)
      if rc and step.otherwise:
        rc = _call(step.otherwise)
    except KeyboardInterrupt:
      rc = 130
    status = status or rc
  return status
