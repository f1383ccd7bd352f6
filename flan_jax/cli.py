"""Command-line handling shared by the binaries: t5x-style gin flags, multi-host start, one-line errors.

Flags: `--gin_file=PATH` (repeatable; looked up in the working directory, then under gin/),
`--gin.NAME=VALUE` (a binding or macro; a VALUE that is not a gin literal is taken as a string),
`--gin_search_paths=DIR,DIR`, and for multi-host runs `--multihost` (auto-detect the cluster) or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; `--heartbeat_timeout_seconds=S`
bounds how long the other hosts wait before they exit when one host dies (default 100).

Exit codes: 0 done (or stopped by SIGTERM after saving), 2 bad input or a run that cannot go on as
asked (one line on stderr says what to change; also a path that cannot be read or written), 3 the loss
diverged, 4 another host of the job died, 5 the disk filled up, 6 a bucket stopped answering, 130 stopped by
Ctrl-C (SIGINT); anything else is a bug, with its traceback.
"""

import dataclasses
import errno
import logging
import os
import sys
from typing import Callable, Optional, Sequence

import gin

from flan_jax import settings, startup, storage
from flan_jax.errors import DiskFullError, StoreUnavailableError, UserError, chain, first_line

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


@dataclasses.dataclass
class Flags:
  gin_files: list[str] = dataclasses.field(default_factory=list)
  gin_bindings: list[str] = dataclasses.field(default_factory=list)
  gin_search_paths: list[str] = dataclasses.field(default_factory=list)
  multihost: bool = False
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  heartbeat_timeout_seconds: int = 100


# Libraries that log a failure they are about to raise: absl (orbax, from every thread), and the bucket clients
# (gcsfs logs each request that ran out of retries, with its traceback).
_HELD_LOGGERS = ("absl", "gcsfs", "fsspec", "s3fs", "aiobotocore", "botocore")


class _HeldLogs(logging.Handler):
  """Holds the libraries' log records of a run (_HELD_LOGGERS): dropped when the run ends in a one-line error,
  written out otherwise."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.records = []
    self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

  def emit(self, record):
    self.records.append(record)

  def replay(self):
    for record in self.records:
      print(self.format(record), file=sys.stderr)
    self.records.clear()


def parse_flags(argv: Sequence[str]) -> Flags:
  flags = Flags()
  args = list(argv)
  while args:
    arg = args.pop(0)
    name, eq, value = arg.partition("=")
    if not eq and name in ("--gin_file", "--gin_search_paths", "--coordinator_address", "--num_processes",
                           "--process_id", "--heartbeat_timeout_seconds") and args:
      value = args.pop(0)
    if name.startswith("--gin."):
      if not eq:
        raise UserError(f"{arg}: write gin bindings as --gin.NAME=VALUE")
      flags.gin_bindings.append(f"{name[len('--gin.'):]} = {settings.as_gin_value(value)}")
    elif name == "--gin_file":
      flags.gin_files.append(value)
    elif name == "--gin_search_paths":
      flags.gin_search_paths.extend(p for p in value.split(",") if p)
    elif name == "--multihost":
      flags.multihost = True
    elif name == "--coordinator_address":
      flags.coordinator_address = value
    elif name in ("--num_processes", "--process_id", "--heartbeat_timeout_seconds"):
      setattr(flags, name[2:], int(value))
    else:
      raise UserError(f"unknown flag {arg}; use --gin_file=PATH, --gin.NAME=VALUE, --gin_search_paths, "
                      "--multihost, --coordinator_address/--num_processes/--process_id or "
                      "--heartbeat_timeout_seconds")
  if not flags.gin_files:
    raise UserError("no --gin_file given; start from gin/runs/finetune.gin, eval.gin or demo.gin")
  return flags


def configure_gin(flags: Flags) -> None:
  for path in [os.getcwd(), GIN_DIR] + flags.gin_search_paths:
    gin.add_config_file_search_path(path)
  for path in flags.gin_files:
    if not (os.path.exists(path) or any(os.path.exists(os.path.join(d, path))
                                       for d in [GIN_DIR] + flags.gin_search_paths)):
      raise UserError(f"gin file {path} not found (looked in ., {GIN_DIR} and --gin_search_paths)")
  logging.disable(logging.ERROR)  # gin logs every search-path miss before it finds a file
  try:
    gin.parse_config_files_and_bindings(flags.gin_files, flags.gin_bindings, finalize_config=True)
  except (ValueError, SyntaxError, ImportError, IOError) as e:
    raise UserError(f"gin: {first_line(e)}") from e
  finally:
    logging.disable(logging.NOTSET)


def initialize_distributed(flags: Flags) -> None:
  """Joins the other processes of a multi-host job (before anything touches a device)."""
  if not (flags.coordinator_address or flags.multihost):
    return
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  try:
    jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                               num_processes=flags.num_processes, process_id=flags.process_id,
                               heartbeat_timeout_seconds=flags.heartbeat_timeout_seconds)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"cannot join the multi-host job: {first_line(e)} (check --coordinator_address, "
                    "--num_processes and --process_id, or run on a TPU slice / SLURM job for --multihost)") from e


def run(main: Callable[[Flags], None], argv: Optional[Sequence[str]] = None) -> None:
  """Runs a binary's main; a mistake the user can fix becomes one line on stderr and exit code 2.

  The other documented failures (see the module docstring) are one line too, with their own codes.
  """
  loggers, held = [logging.getLogger(name) for name in _HELD_LOGGERS], _HeldLogs()
  for logger in loggers:
    logger.setLevel(logging.ERROR)
    logger.addHandler(held)
    logger.propagate = False
  sys.unraisablehook = _without_closed_loop_noise  # kept to the end: the noise can come at exit
  code, message = None, None
  try:
    flags = parse_flags(sys.argv[1:] if argv is None else argv)
    configure_gin(flags)
    initialize_distributed(flags)
    startup.enable_compilation_cache()
    main(flags)
  except UserError as e:
    code, message = 2, first_line(e)
  except FloatingPointError as e:  # a diverged run: the message names the step
    code, message = 3, first_line(e)
  except DiskFullError as e:  # names the step and the last complete checkpoint
    code, message = 5, first_line(e)
  except StoreUnavailableError as e:  # the trainer names the step
    code, message = 6, first_line(e)
  except KeyboardInterrupt:
    code, message = 130, ("interrupted (Ctrl-C); results and checkpoints are written whole or not at all, so "
                          "rerun the same command to go on")
  except Exception as e:
    if _peer_failure(e):
      code, message = 4, (f"a collective failed, most likely because another host of this job died; see its "
                          f"log ({first_line(e)[:200]})")
    elif _user_error_in(e) is not None:
      code, message = 2, _user_error_in(e)
    elif _os_error(e, (errno.ENOSPC,)) is not None:  # the trainer names its step; the other binaries get this
      code, message = 5, _disk_full_message(_os_error(e, (errno.ENOSPC,)))
    elif storage.unavailable(e) is not None:
      code, message = 6, (f"a bucket stopped answering ({storage.unavailable(e)}); files are written whole or "
                          "not at all, so rerun the same command when it answers again")
    else:
      code, message = 2, None if _os_error(e, _PATH_ERRORS) is None else _path_message(_os_error(e, _PATH_ERRORS))
      if message is None:  # a bug: its traceback, with the library logs that led to it
        held.replay()
        raise
  finally:
    for logger in loggers:
      logger.removeHandler(held)
      logger.propagate = True
  if message is None:
    held.replay()
    return
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _without_closed_loop_noise(unraisable) -> None:
  """After an async checkpoint write fails, tensorstore's native callbacks still call into orbax's
  closed event loop; Python reports each RuntimeError as unraisable. Drop those, keep the rest."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def _peer_failure(e: BaseException) -> bool:
  import jax
  return jax.process_count() > 1 and isinstance(e, jax.errors.JaxRuntimeError)


# Errors of the environment, not of flan_jax: a path that is missing, unreadable or on a read-only disk.
_PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def _os_error(e: BaseException, codes: Sequence[int]) -> Optional[OSError]:
  """The first OSError with one of `codes` among the exception and its causes (libraries wrap them)."""
  for seen in chain(e):
    if isinstance(seen, OSError) and seen.errno in codes:
      return seen
  if errno.ENOSPC in codes and any("No space left on device" in str(seen) for seen in chain(e)):
    return OSError(errno.ENOSPC, "No space left on device")  # tensorstore and orbax keep only the text
  return None


def _disk_full_message(e: OSError) -> str:
  where = f" while writing {e.filename}" if e.filename else ""
  return (f"no space left on device{where}; nothing half-written is kept (finished results are). Free some "
          "space and rerun the same command")


def _path_message(e: OSError) -> str:
  path = f" {e.filename}" if e.filename else ""
  fixes = {errno.ENOENT: "check the path", errno.ENOTDIR: "check the path",
           errno.EISDIR: "pass a file, not a directory",
           errno.EEXIST: "a file is in the way of a directory: pass a directory path"}
  fix = fixes.get(e.errno, "check its permissions or choose another path")
  return f"{e.strerror or first_line(e)}:{path}; {fix}"


def _user_error_in(e: BaseException) -> Optional[str]:
  """Gin re-raises errors from inside configurables as proxies; find a UserError or missing binding."""
  for seen in chain(e):
    if isinstance(seen, UserError):
      return first_line(seen)
    if "Required bindings" in str(seen) or "No configurable matching" in str(seen):
      return f"gin: {first_line(seen)}"
  return None
