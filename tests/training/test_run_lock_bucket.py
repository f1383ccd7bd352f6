"""One trainer per MODEL_DIR in a bucket (the local GCS server of tests/storage_server.py): the lock object is
created only if absent, renewed by its holder, taken over when its holder is dead or stopped renewing, and a
holder that lost it stops before its next save. Holders are real processes; one is paused with SIGSTOP to
play a host that stopped answering, another killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flan_jax import storage
from flan_jax.errors import UserError
from flan_jax.training import run_lock
from tests.conftest import ROOT


def _holder(model_dir: str, *, start_at: float = 0.0, renew: float = 0.5, stale: float = 60.0,
            hold_for: float = 600.0) -> subprocess.Popen:
  """A process that takes MODEL_DIR's lock at `start_at` (time.time()), says 'held' or 'refused: ...', and while
  holding checks the lock every 0.1 s, as the trainer does before each save ('lost: ...' when it was taken)."""
  code = textwrap.dedent(f"""
      import time
      from flan_jax.errors import UserError
      from flan_jax.training import run_lock
      time.sleep(max(0.0, {start_at!r} - time.time()))
      try:
        with run_lock.hold({model_dir!r}, stale_seconds={stale!r}, renew_seconds={renew!r}) as lock:
          print("held", flush=True)
          end = time.time() + {hold_for!r}
          while time.time() < end:
            time.sleep(0.1)
            lock.check()
      except UserError as e:
        print(("lost: " if "was taken over by" in str(e) else "refused: ") + str(e), flush=True)
      """)
  return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _stop(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.send_signal(signal.SIGKILL)
  process.communicate()


def test_of_three_trainers_started_at_once_on_a_bucket_dir_exactly_one_runs(gcs_dir):
  start = time.time() + 8  # after all three have imported jax
  holders = [_holder(gcs_dir, start_at=start, hold_for=4) for _ in range(3)]
  try:
    outputs = [h.communicate(timeout=120) for h in holders]
  finally:
    for h in holders:
      _stop(h)
  said = [out.strip() for out, _ in outputs]
  assert sorted(s.split(":")[0] for s in said) == ["held", "refused", "refused"], outputs
  winner = holders[said.index("held")].pid
  for s in said:
    if s != "held":
      assert f"is in use by pid {winner} on host" in s and "lock renewed" in s, s
  assert not storage.exists(storage.join(gcs_dir, run_lock.LOCK_FILE))  # released when the winner finished
  with run_lock.hold(gcs_dir):
    pass


def test_a_renewed_lock_is_refused_a_killed_holders_lock_is_taken_over_at_once(gcs_dir, capsys):
  holder = _holder(gcs_dir, renew=0.5, stale=2.0)
  try:
    assert holder.stdout.readline().strip() == "held"
    time.sleep(3.0)  # longer than `stale`: the holder has renewed it meanwhile
    with pytest.raises(UserError, match=f"in use by pid {holder.pid} on host .*lock renewed [01] s ago"):
      with run_lock.hold(gcs_dir, stale_seconds=2.0):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    capsys.readouterr()
    with run_lock.hold(gcs_dir, stale_seconds=60.0):  # pid gone from this host: no need to wait 60 s
      said = capsys.readouterr().out.strip().splitlines()
      assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "is no longer running on this host" in said[0]
  finally:
    _stop(holder)


def test_a_holder_that_stopped_renewing_is_taken_over_and_then_stops_without_saving(gcs_dir, capsys):
  holder = _holder(gcs_dir, renew=0.3, stale=2.0)
  try:
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGSTOP)  # a host that stopped answering: alive, but not renewing
    with pytest.raises(UserError, match="in use by"):
      with run_lock.hold(gcs_dir, stale_seconds=2.0):
        pass
    time.sleep(2.5)
    with run_lock.hold(gcs_dir, stale_seconds=2.0, renew_seconds=0.3) as lock:
      said = capsys.readouterr().out.strip().splitlines()
      assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "has not renewed it for" in said[0], said
      holder.send_signal(signal.SIGCONT)  # the old holder wakes up, fails to renew, and stops at its next check
      out, _ = holder.communicate(timeout=30)
      assert out.strip().startswith(f"lost: MODEL_DIR {gcs_dir} was taken over by pid {os.getpid()}"), out
      lock.check()  # the new holder keeps it
      time.sleep(1.0)
      lock.check()
  finally:
    _stop(holder)
