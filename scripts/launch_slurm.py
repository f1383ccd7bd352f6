#!/usr/bin/env python3
"""Writes and submits a SLURM batch script that runs a flan_jax job on N nodes x G GPUs,
one task per GPU, each task one JAX process (jax.distributed reads the SLURM environment).
"""

import argparse
import os
import re
import subprocess
import sys

import launch_common as common

HEREDOC_END = "FLAN_JAX_SBATCH"
_TIME = re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$")
_WORD = re.compile(r"^[A-Za-z0-9_.:@+-]+$")


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__,
      usage="%(prog)s --nodes N --gpus_per_node G [options] -- JOB_FLAGS...",
      epilog="Everything after `--` goes to the job unchanged, e.g. "
             "-- --gin_file=gin/runs/finetune.gin --gin.MODEL_DIR=\"'/shared/runs/r1'\"")
  alloc = parser.add_argument_group("allocation")
  alloc.add_argument("--nodes", type=positive_int, default=1, help="default %(default)s")
  alloc.add_argument("--gpus_per_node", type=positive_int, default=8,
                     help="GPUs per node, and so tasks per node (default %(default)s)")
  alloc.add_argument("--gpu_type", help="e.g. a100 or h100, giving --gpus-per-node=TYPE:G")
  alloc.add_argument("--cpus_per_task", type=positive_int)
  alloc.add_argument("--partition")
  alloc.add_argument("--account")
  alloc.add_argument("--time", help="wall-clock limit, e.g. 04:00:00 or 2-00:00:00")
  alloc.add_argument("--sbatch_option", action="append", default=[], metavar="OPTION",
                     help="another #SBATCH line, e.g. --sbatch_option=--qos=high (repeatable)")
  script = parser.add_argument_group("the batch script")
  script.add_argument("--name", default="flan_jax", help="job name (default %(default)s)")
  script.add_argument("--workdir", default=common.REPO_ROOT,
                      help="the repo on the cluster's shared file system (default: this checkout)")
  script.add_argument("--output", default="slurm-%x-%j.out",
                      help="log file, relative to --workdir (default %(default)s)")
  script.add_argument("--venv", help="a virtualenv to activate before srun")
  script.add_argument("--setup", action="append", default=[], metavar="SHELL",
                      help="a shell line to run before srun, e.g. 'module load cuda' (repeatable)")
  script.add_argument("--container_image",
                      help="run each task in this image (pyxis/enroot srun --container-image)")
  script.add_argument("--container_mounts",
                      help="pyxis --container-mounts (default: WORKDIR:WORKDIR)")
  script.add_argument("--script", help="where to write the batch script (default ./NAME.sbatch)")
  common.add_job_flags(parser, python="python")
  return parser


def parse(argv) -> argparse.Namespace:
  parser = build_parser()
  args = common.parse_args(parser, argv)
  common.require_job_args(parser, args)
  for flag in ("name", "partition", "account", "gpu_type", "workdir", "output"):
    value = getattr(args, flag)
    if value is not None and (not value or re.search(r"\s", value)):
      parser.error(f"--{flag} {value!r}: must be non-empty and without spaces")
  if args.gpu_type and not _WORD.match(args.gpu_type):
    parser.error(f"--gpu_type {args.gpu_type!r}: expected a GRES type such as a100")
  if args.time and not _TIME.match(args.time):
    parser.error(f"--time {args.time!r}: expected MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
  for option in args.sbatch_option:
    if not option.startswith("-") or "\n" in option:
      parser.error(f"--sbatch_option {option!r}: expected one sbatch flag such as --qos=high")
  if any("\n" in line for line in args.setup):
    parser.error("--setup: give one shell line per flag")
  args.script = args.script or f"{args.name}.sbatch"
  return args


def sbatch_lines(args: argparse.Namespace) -> list[str]:
  """The #SBATCH header: one task per GPU, so JAX runs one process per GPU."""
  gpus = f"{args.gpu_type}:{args.gpus_per_node}" if args.gpu_type else str(args.gpus_per_node)
  options = [
      f"--job-name={args.name}",
      f"--nodes={args.nodes}",
      f"--ntasks-per-node={args.gpus_per_node}",
      f"--gpus-per-node={gpus}",
  ]
  optional = {"cpus-per-task": args.cpus_per_task, "partition": args.partition,
              "account": args.account, "time": args.time}
  options += [f"--{key}={value}" for key, value in optional.items() if value is not None]
  options += [f"--chdir={args.workdir}", f"--output={args.output}", *args.sbatch_option]
  return [f"#SBATCH {option}" for option in options]


def srun_argv(args: argparse.Namespace) -> list[str]:
  """srun runs NODES x GPUS_PER_NODE copies of the job; one dying stops them all."""
  argv = ["srun", "--kill-on-bad-exit=1"]
  if args.cpus_per_task:
    argv.append(f"--cpus-per-task={args.cpus_per_task}")
  if args.container_image:
    mounts = args.container_mounts or f"{args.workdir}:{args.workdir}"
    argv += [f"--container-image={args.container_image}", f"--container-mounts={mounts}",
             f"--container-workdir={args.workdir}"]
  return argv + common.job_argv(args)


def batch_script(args: argparse.Namespace) -> str:
  lines = ["#!/bin/bash", *sbatch_lines(args),
           "# Written by scripts/launch_slurm.py. One task per GPU: JAX's SLURM detection",
           "# gives task SLURM_LOCALID the GPU of that index, so tasks must see every GPU",
           "# of their node (do not add --gpus-per-task or --gpu-bind).",
           "set -eo pipefail", *args.setup]
  if args.venv:
    lines.append(f"source {common.quote(os.path.join(args.venv, 'bin', 'activate'))}")
  lines += [f"export {name}={common.quote(value)}" for name, value in common.env_pairs(args)]
  lines.append(common.join(srun_argv(args)))
  return "\n".join(lines) + "\n"


def sbatch_argv(args: argparse.Namespace) -> list[str]:
  return ["sbatch", "--parsable", args.script]


def dry_run(args: argparse.Namespace, script: str) -> int:
  """Prints a shell transcript: write the script (here-document), then submit it."""
  if HEREDOC_END in script.splitlines():
    print(f"error: the script contains the line {HEREDOC_END}", file=sys.stderr)
    return 2
  print(f"cat > {common.quote(args.script)} <<'{HEREDOC_END}'")
  print(script + HEREDOC_END)
  print(common.join(sbatch_argv(args)))
  return 0


def submit(args: argparse.Namespace, script: str) -> int:
  """Writes the script, submits it, prints the job id (stdout) and the log path (stderr)."""
  os.makedirs(os.path.dirname(os.path.abspath(args.script)), exist_ok=True)
  with open(args.script, "w") as f:
    f.write(script)
  try:
    done = subprocess.run(sbatch_argv(args), capture_output=True, text=True)
  except FileNotFoundError:
    print("error: sbatch not found on PATH", file=sys.stderr)
    return 127
  if done.returncode:
    print(f"error: sbatch failed: {done.stderr.strip()}", file=sys.stderr)
    return done.returncode
  job_id = done.stdout.strip().split(";")[0]
  log = os.path.join(args.workdir, args.output.replace("%x", args.name).replace("%j", job_id))
  print(job_id)
  print(f"submitted {args.script} as job {job_id}; log: {log}", file=sys.stderr)
  return 0


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  script = batch_script(args)
  return dry_run(args, script) if args.dry_run else submit(args, script)


if __name__ == "__main__":
  sys.exit(main())
