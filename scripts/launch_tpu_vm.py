#!/usr/bin/env python3
"""Runs a flan_jax job on every worker of a Cloud TPU VM slice: create (or reuse) the slice,
copy or clone the repo, install, run with --worker=all while streaming the log, and maybe delete.
"""

import argparse
import os
import re
import subprocess
import sys

import launch_common as common

STEPS = ("create", "copy", "install", "run", "delete")
DEFAULT_STEPS = "create,copy,install,run"
# Default runtime (--version) per accelerator family, as Cloud TPU recommends for JAX.
RUNTIMES = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
_ACCELERATOR = re.compile(r"^(v[0-9]+[a-z]*)-([0-9]+)$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z]+(-[a-z]+)*[0-9]+-[a-z]$")
VENV_PYTHON = "3.11"
LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
T5_RUNTIME_DEPS = ("babel", "nltk", "rouge-score", "sacrebleu", "scikit-learn", "pandas",
                   "editdistance", "immutabledict")


def default_install_cmd() -> str:
  """Builds REMOTE_DIR/.venv (once) and installs the repo with jax[tpu], then t5 without its deps
  (the version the Makefile pins; ValueError if it pins none).

  The venv gets its Python from uv, because the TPU images ship Python 3.10 and jax >= 0.7
  needs 3.11 or newer.
  """
  pip = [".venv/bin/python", "-m", "pip", "install", "-q"]
  make_venv = ("(test -x .venv/bin/python || (python3 -m pip install -q --user uv"
               f" && ~/.local/bin/uv venv -q --seed --python {VENV_PYTHON} .venv))")
  return make_venv + " && " + common.shell_join(
      pip + ["-U", "pip"],
      pip + ["-e", ".[tpu]", "-f", LIBTPU_INDEX],
      pip + ["--no-deps", f"t5=={common.t5_version()}"],
      pip + list(T5_RUNTIME_DEPS))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__,
      usage="%(prog)s --name NAME --zone ZONE --accelerator TYPE [options] -- JOB_FLAGS...",
      epilog="Everything after `--` goes to the job unchanged, e.g. "
             "-- --gin_file=gin/runs/finetune.gin --gin.MODEL_DIR=\"'gs://bucket/run'\"")
  slice_ = parser.add_argument_group("the slice")
  slice_.add_argument("--name", required=True, help="TPU VM name")
  slice_.add_argument("--zone", required=True, help="e.g. us-central2-b")
  slice_.add_argument("--accelerator", "--accelerator_type", dest="accelerator",
                      help="e.g. v4-32, v5litepod-16, v5p-8, v6e-8 (needed to create)")
  slice_.add_argument("--version", help="TPU runtime; default picked from the accelerator")
  slice_.add_argument("--project", help="GCP project (default: gcloud's configured one)")
  capacity = slice_.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="create a Spot slice")
  capacity.add_argument("--preemptible", action="store_true", help="create a preemptible slice")
  slice_.add_argument("--create_flag", action="append", default=[], metavar="FLAG",
                      help="extra flag for `tpu-vm create`, e.g. --create_flag=--network=NET")
  steps = parser.add_argument_group("what to do")
  steps.add_argument("--steps", default=DEFAULT_STEPS,
                     help=f"comma-separated subset of {','.join(STEPS)} "
                          "(always run in that order; default %(default)s)")
  steps.add_argument("--delete_after", action="store_true",
                     help="delete the slice at the end, even if an earlier step failed")
  code = parser.add_argument_group("code and install")
  code.add_argument("--src_dir", default=common.REPO_ROOT,
                    help="local checkout to copy; its git-visible top-level entries are sent")
  code.add_argument("--repo_url", help="git clone (or fetch) this on every worker instead of "
                                       "copying; untracked files there (.venv, logs) stay")
  code.add_argument("--repo_ref", help="branch, tag or commit to check out (default: the "
                                       "remote's HEAD)")
  code.add_argument("--remote_dir", default="flan_jax",
                    help="where the repo lives on each worker, relative to home "
                         "(default %(default)s)")
  code.add_argument("--install_cmd",
                    help="shell command run in REMOTE_DIR on every worker "
                         "(default: a Python 3.11 .venv with the repo, jax[tpu] and t5 at "
                         "the Makefile's T5_VERSION)")
  code.add_argument("--log_file",
                    help="log on each worker, relative to REMOTE_DIR (default logs/NAME-JOB.log)")
  common.add_job_flags(parser, python=".venv/bin/python")
  return parser


def parse(argv) -> argparse.Namespace:
  parser = build_parser()
  args = common.parse_args(parser, argv)
  if not _NAME.match(args.name):
    parser.error(f"--name {args.name!r}: use lowercase letters, digits and '-', "
                 "starting with a letter")
  if not _ZONE.match(args.zone):
    parser.error(f"--zone {args.zone!r} does not look like a zone (e.g. us-central2-b)")
  steps = [s.strip() for s in args.steps.split(",") if s.strip()]
  unknown = sorted(set(steps) - set(STEPS))
  if unknown or not (steps or args.delete_after):
    parser.error(f"--steps {args.steps!r}: choose a comma-separated subset of {','.join(STEPS)}")
  if args.delete_after:
    steps.append("delete")
  args.steps = [s for s in STEPS if s in steps]
  if "run" in args.steps:
    common.require_job_args(parser, args)
  if args.remote_dir.startswith("/") or any(
      part in ("", ".", "..") for part in args.remote_dir.split("/")):
    parser.error(f"--remote_dir {args.remote_dir!r}: give a plain path relative to home")
  if args.repo_ref and not args.repo_url:
    parser.error("--repo_ref needs --repo_url")
  if args.accelerator or "create" in args.steps:
    runtime = _runtime(parser, args.accelerator, needed=not args.version)
    args.version = args.version or runtime
  if args.install_cmd is None and "install" in args.steps:
    try:
      args.install_cmd = default_install_cmd()
    except ValueError as e:
      parser.error(f"{e}; pass --install_cmd")
  if args.log_file is None:
    args.log_file = f"logs/{args.name}-{args.module.rsplit('.', 1)[-1]}.log"
  return args


def _runtime(parser: argparse.ArgumentParser, accelerator, needed: bool):
  """Checks the accelerator type and returns its default runtime (None if unknown, not needed)."""
  if not accelerator:
    parser.error("creating a slice needs --accelerator (e.g. v4-32)")
  match = _ACCELERATOR.match(accelerator)
  if not match:
    parser.error(f"--accelerator {accelerator!r}: unknown format; "
                 "expected FAMILY-SIZE such as v4-32, v5litepod-16, v5p-8, v6e-8")
  if needed and match.group(1) not in RUNTIMES:
    parser.error(f"--accelerator {accelerator!r}: no default runtime for "
                 f"{match.group(1)}; pass --version")
  return RUNTIMES.get(match.group(1))


def gcloud(args: argparse.Namespace, verb: str, positional: list[str], *flags: str) -> list[str]:
  """`gcloud compute tpus tpu-vm VERB POSITIONAL... --zone=Z [--project=P] FLAGS...`."""
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, *positional, *where, *flags]


def on_all_workers(args: argparse.Namespace, command: str) -> list[str]:
  """Runs a shell command on every worker of the slice, in parallel."""
  return gcloud(args, "ssh", [args.name], "--worker=all", f"--command={command}")


def in_remote_dir(args: argparse.Namespace, command: str) -> str:
  return f"cd {common.quote(args.remote_dir)} && {command}"


def top_level_entries(src_dir: str) -> list[str]:
  """The top-level files and folders git would track (tracked or untracked, not ignored)."""
  out = subprocess.run(
      ["git", "-C", src_dir, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      check=True, capture_output=True, text=True).stdout
  names = {path.split("/", 1)[0] for path in out.split("\0") if path}
  return sorted(n for n in names if os.path.lexists(os.path.join(src_dir, n)))


def create_step(args: argparse.Namespace) -> common.Step:
  create = gcloud(args, "create", [args.name], f"--accelerator-type={args.accelerator}",
                  f"--version={args.version}")
  create += ["--spot"] * args.spot + ["--preemptible"] * args.preemptible + args.create_flag
  describe = gcloud(args, "describe", [args.name], "--format=value(state)")
  return common.Step(describe, otherwise=create)


def copy_steps(args: argparse.Namespace) -> list[common.Step]:
  """Clone-or-fetch --repo_url on every worker, or scp this checkout's files to every worker."""
  if args.repo_url:
    git = ["git", "-C", args.remote_dir]
    has_clone = common.join(["test", "-d", f"{args.remote_dir}/.git"])
    clone = common.join(["git", "clone", "-q", args.repo_url, args.remote_dir])
    update = common.shell_join(git + ["fetch", "-q", "origin", args.repo_ref or "HEAD"],
                               git + ["checkout", "-q", "-f", "--detach", "FETCH_HEAD"])
    return [common.Step(on_all_workers(args, f"({has_clone} || {clone}) && {update}"))]
  src_dir = os.path.abspath(args.src_dir)
  sources = [os.path.join(src_dir, n) for n in top_level_entries(src_dir)]
  return [
      common.Step(on_all_workers(args, common.join(["mkdir", "-p", args.remote_dir]))),
      common.Step(gcloud(args, "scp", [*sources, f"{args.name}:{args.remote_dir}"],
                         "--worker=all", "--recurse")),
  ]


def run_command(args: argparse.Namespace) -> str:
  """The remote shell command: the job in REMOTE_DIR, its output also appended to the log."""
  env = [f"{k}={v}" for k, v in common.env_pairs(args)]
  job = (["env", *env] if env else []) + common.job_argv(args)
  log_dir = os.path.dirname(args.log_file) or "."
  return in_remote_dir(args, "set -o pipefail && " + common.shell_join(["mkdir", "-p", log_dir])
                       + f" && {common.join(job)} 2>&1 | tee -a {common.quote(args.log_file)}")


def build_steps(args: argparse.Namespace) -> list[common.Step]:
  steps = []
  if "create" in args.steps:
    steps.append(create_step(args))
  if "copy" in args.steps:
    steps += copy_steps(args)
  if "install" in args.steps:
    steps.append(common.Step(on_all_workers(args, in_remote_dir(args, args.install_cmd))))
  if "run" in args.steps:
    steps.append(common.Step(on_all_workers(args, run_command(args))))
  if "delete" in args.steps:
    steps.append(common.Step(gcloud(args, "delete", [args.name], "--quiet"), always=True))
  return steps


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    steps = build_steps(args)
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    detail = getattr(e, "stderr", None) or str(e)
    print(f"error: cannot list the files of --src_dir {args.src_dir} (is it a git checkout?): "
          f"{detail.strip()}", file=sys.stderr)
    return 2
  return common.run_steps(steps, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
