"""Command-line handling shared by the binaries: t5x-style gin flags, multi-host start, one-line errors.

Flags: `--gin_file=PATH` (repeatable; looked up in the working directory, then under gin/),
`--gin.NAME=VALUE` (a binding or macro; a VALUE that is not a gin literal is taken as a string),
`--gin_search_paths=DIR,DIR`, and for multi-host runs `--multihost` (auto-detect the cluster) or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; `--heartbeat_timeout_seconds=S`
bounds how long the other hosts wait before they exit when one host dies (default 100; see _Peers).

Exit codes: 0 done (or stopped by SIGTERM after saving), 2 bad input or a run that cannot go on as
asked (one line on stderr says what to change; also a path that cannot be read or written), 3 the loss
diverged, 4 another host of the job died, 5 the disk filled up, 6 a bucket stopped answering, 130 stopped by
Ctrl-C (SIGINT); anything else is a bug, with its traceback.
"""

import atexit
import dataclasses
import errno
import logging
import os
import sys
import threading
import time
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


# The flags above that take a value (`--flag=VALUE` or `--flag VALUE`), and those that take none.
VALUE_FLAGS = ("--gin_file", "--gin_search_paths", "--coordinator_address", "--num_processes", "--process_id",
               "--heartbeat_timeout_seconds")
SWITCHES = ("--multihost",)


def parse_flags(argv: Sequence[str], gin_file_required: bool = True) -> Flags:
  flags = Flags()
  args = list(argv)
  while args:
    arg = args.pop(0)
    name, eq, value = arg.partition("=")
    if not eq and name in VALUE_FLAGS and args:
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
  if not flags.gin_files and gin_file_required:
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


def initialize_distributed(flags: Flags) -> Optional["_Peers"]:
  """Joins the other processes of a multi-host job (before anything touches a device); returns the watch on
  the other hosts (_Peers), or None (one process, or a JAX without what the watch needs)."""
  if not (flags.coordinator_address or flags.multihost):
    return None
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  watch = _can_watch_peers()
  if watch:  # a dead host is then this process's one line and exit 4 (_Peers), not JAX's abort
    jax.config.update("jax_enable_recoverability", True)
  try:
    jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                               num_processes=flags.num_processes, process_id=flags.process_id,
                               heartbeat_timeout_seconds=flags.heartbeat_timeout_seconds)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"cannot join the multi-host job: {first_line(e)} (check --coordinator_address, "
                    "--num_processes and --process_id, or run on a TPU slice / SLURM job for --multihost)") from e
  if not watch:
    return None
  from jax._src import distributed
  state = distributed.global_state
  peers = _Peers(state.client, state.process_id, state.num_processes, flags.heartbeat_timeout_seconds)
  peers.start()
  return peers


def _can_watch_peers() -> bool:
  """Whether this JAX has what _Peers needs: recoverable tasks and the coordinator's list of live ones."""
  from jax._src import distributed
  from jax._src.lib import _jax
  return (hasattr(distributed, "_ENABLE_RECOVERABILITY")
          and hasattr(_jax.DistributedRuntimeClient, "get_live_nodes"))


_PEER_STATES = "flan_jax/host_state/"  # + process id, in the coordination service's key-value store
_ENDING, _GONE = "ending", "gone"
_END_TIMEOUT_SECONDS = 300  # what JAX's own shutdown barrier waits for the other hosts (shutdown_timeout_seconds)


class _Peers:
  """Ends this process with one line and exit 4 when another host of the job dies, wherever it is waiting.

  By default the JAX distributed client aborts a process natively (LOG(FATAL), SIGABRT, its text on stderr) as
  soon as the coordinator reports any task dead, before Python can act, and its `missed_heartbeat_callback`
  cannot be replaced from Python (jaxlib 0.10 cannot pass the status to a Python callable: std::bad_cast, then
  abort). So the coordinator is started with recoverable tasks (`jax_enable_recoverability`: it records a dead
  task instead of failing the others), and this thread asks it which processes are live
  (`get_live_nodes`, which waits for every live process to ask too), every heartbeat timeout / 10 (1 to 10 s).
  A process missing from the answer that did not end its run died (it stopped sending heartbeats for
  --heartbeat_timeout_seconds): this process writes the exit-4 line and leaves at once (os._exit: its main
  thread may be blocked in a collective with the dead host that never returns; checkpoints are written
  whole or not at all, and the kernel drops the run lock).

  Recoverable tasks skip JAX's shutdown barrier, which kept the coordinator's service up until every host had
  finished. `leave` (at exit) does that instead: each process records in the coordinator's key-value store
  that it is ending and waits (up to 300 s, as JAX did) until every other host is ending too or is dead; the
  first process (which runs the coordinator) then also waits until the others have disconnected. A host that
  is still running when a peer gives up waiting is told so ('gone') and exits 4.

  Not covered: when the first process itself dies, the coordinator dies with it, and the JAX client of every
  other host aborts natively at once (its poll of the coordinator fails), with JAX's own fatal message.
  """

  def __init__(self, client, process_id: int, num_processes: int, heartbeat_timeout_seconds: int):
    self.client, self.me, self.count = client, process_id, num_processes
    self.heartbeat = heartbeat_timeout_seconds
    self.interval = min(10.0, max(1.0, heartbeat_timeout_seconds / 10))
    self.live = set(range(num_processes))
    self.lock = threading.Lock()  # held to write the exit-4 line; `ending` set under it
    self.ending = False  # this process's run has ended: another host's death is no longer its failure
    self.stopped, self.wake = threading.Event(), threading.Event()

  def start(self) -> None:
    threading.Thread(target=self._watch, name="flan_jax_peers", daemon=True).start()
    atexit.register(self.leave)  # after jax's own atexit handler was registered, so it runs before it

  def end_run(self) -> None:
    with self.lock:
      self.ending = True

  def _states(self) -> dict[int, str]:
    return {int(key.rsplit("/", 1)[-1]): value for key, value in self.client.key_value_dir_get(_PEER_STATES)}

  def _dead(self, states: dict[int, str]) -> list[int]:
    return [i for i in range(self.count) if i != self.me
            and (states.get(i) == _GONE or (i not in self.live and states.get(i) != _ENDING))]

  def _watch(self) -> None:
    while not self.stopped.is_set():
      try:
        self.live = set(self.client.get_live_nodes(list(range(self.count))))
        dead = self._dead(self._states())
      except Exception as e:  # noqa: BLE001  (the coordinator did not answer)
        if self.stopped.is_set():
          return
        self._died(f"the coordinator did not answer: {first_line(e)[:200]}")
      else:
        if dead:
          self._died(f"process {', '.join(map(str, dead))} stopped")
      self.wake.wait(0.2 if self.ending else self.interval)
      self.wake.clear()

  def _died(self, why: str) -> None:
    with self.lock:
      if self.ending:
        return
      try:
        sys.stdout.flush()
      except Exception:  # noqa: BLE001
        pass
      print(f"error: another host of this job died ({why}; --heartbeat_timeout_seconds={self.heartbeat}); see its "
            "log, then rerun the same command to resume from the last checkpoint", file=sys.stderr, flush=True)
      os._exit(4)

  def leave(self) -> None:
    """At exit: wait until every other host has ended its run or is dead (see the class)."""
    self.end_run()
    self.wake.set()
    try:
      self.client.key_value_set(f"{_PEER_STATES}{self.me}", _ENDING, allow_overwrite=True)
      others = set(range(self.count)) - {self.me}
      deadline = time.monotonic() + _END_TIMEOUT_SECONDS
      while any(self._states().get(i) not in (_ENDING, _GONE) and i in self.live for i in others):
        if time.monotonic() > deadline:
          self.client.key_value_set(f"{_PEER_STATES}{self.me}", _GONE, allow_overwrite=True)
          break
        time.sleep(0.2)
      deadline = time.monotonic() + _END_TIMEOUT_SECONDS
      while self.me == 0 and self.live & others and time.monotonic() < deadline:  # keep the coordinator up
        time.sleep(0.2)
    except Exception:  # noqa: BLE001  (a coordinator gone: nothing left to wait for)
      pass
    self.stopped.set()
    self.wake.set()



def run(main: Callable[[Flags], None], argv: Optional[Sequence[str]] = None, gin_file_required: bool = True) -> None:
  """Runs a binary's main; a mistake the user can fix becomes one line on stderr and exit code 2.

  The other documented failures (see the module docstring) are one line too, with their own codes. A command
  whose gin settings are all optional (the lm-eval harness) passes gin_file_required=False.
  """
  loggers, held = [logging.getLogger(name) for name in _HELD_LOGGERS], _HeldLogs()
  for logger in loggers:
    logger.setLevel(logging.ERROR)
    logger.addHandler(held)
    logger.propagate = False
  sys.unraisablehook = _without_closed_loop_noise  # kept to the end: the noise can come at exit
  code, message, peers = None, None, None
  try:
    flags = parse_flags(sys.argv[1:] if argv is None else argv, gin_file_required)
    configure_gin(flags)
    peers = initialize_distributed(flags)
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
    if peers is not None:  # from here on another host's death is not this run's failure (nor its line)
      peers.end_run()
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
