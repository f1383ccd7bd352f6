"""Two real processes (jax.distributed on 127.0.0.1) train one run whose MODEL_DIR is in a bucket (the local GCS
server of tests/storage_server.py), the parameters fsdp-sharded across both: a host killed with kill -9 ends
the job, the same command rerun resumes and reaches what an uninterrupted two-process run reaches, bit for
bit; SIGTERM to both hosts, half a second apart, saves at one step boundary both agree on, and both exit 0."""

import signal
import time

import jax
import pytest

from flan_jax import storage
from flan_jax.checkpoints import paths
from flan_jax.checkpoints import store as checkpointing
from flan_jax.model import partitioning
from flan_jax.model.transformer import Transformer
from tests.checks import assert_trees_equal
from tests.conftest import TINY
from tests.end_to_end.test_multiprocess import free_port, start

FSDP = ["--gin.make_mesh.fsdp=4", "--gin.make_mesh.data=1", "--gin.train.async_checkpointing=False"]


def _run(model_dir, steps, extra=()):
  port = free_port()
  return [start(model_dir, steps, port, i, extra=[*FSDP, *extra]) for i in range(2)]


def _until(proc, prefix) -> str:
  """What the process printed up to and including the first line starting with `prefix`."""
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(prefix):
      break
  return "".join(seen)


def _finish(procs, timeout=300, before=""):
  try:
    return [(before if i == 0 else "") + p.communicate(timeout=timeout)[0] for i, p in enumerate(procs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()


def _params(step_dir):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  return checkpointing.restore_params(step_dir, partitioning.sharded_param_structs(Transformer(TINY), mesh,
                                                                                   partitioning.axis_rules()))


@pytest.fixture(scope="module")
def runs(gcs_bucket):
  """The uninterrupted run (4 steps) and the interrupted one, started together; then the interrupted one's
  rerun, stopped by SIGTERM after step 5."""
  straight, killed = f"{gcs_bucket}/two_hosts/straight", f"{gcs_bucket}/two_hosts/killed"
  uninterrupted = _run(straight, 4)
  interrupted = _run(killed, 100000, extra=["--heartbeat_timeout_seconds=5"])
  before = _until(interrupted[0], "step 3/")  # step 2 is saved (synchronously); step 3 is not
  interrupted[1].send_signal(signal.SIGKILL)
  killed_out = _finish(interrupted, timeout=120, before=before)
  straight_out = _finish(uninterrupted)
  rerun = _run(killed, 100000)
  before = _until(rerun[0], "step 5/")
  for p in reversed(rerun):  # a preemption notice reaches the hosts of a job at different moments
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
  rerun_out = _finish(rerun, before=before)
  return (straight, straight_out, [p.returncode for p in uninterrupted]), \
      (killed, killed_out, [p.returncode for p in interrupted]), (rerun_out, [p.returncode for p in rerun])


def test_a_host_killed_in_a_bucket_run_ends_the_job_and_the_rerun_resumes_bit_exactly(runs):
  (straight, straight_out, straight_codes), (killed, killed_out, killed_codes), (rerun_out, _) = runs
  assert straight_codes == [0, 0], straight_out[0][-3000:]
  assert killed_codes == [4, -signal.SIGKILL], killed_out[0][-3000:]  # exit 4: another host of the job died
  assert "resumed from step 2" in rerun_out[0], rerun_out[0][-3000:]
  step_a, a = _params(storage.join(straight, paths.SUBDIR, "4"))
  step_b, b = _params(storage.join(killed, paths.SUBDIR, "4"))
  assert step_a == step_b == 4
  assert_trees_equal(a, b)


def test_sigterm_to_both_hosts_of_a_bucket_run_saves_and_exits_0(runs):
  (_, _, _), (killed, _, _), (rerun_out, rerun_codes) = runs
  assert rerun_codes == [0, 0], rerun_out[0][-3000:] + rerun_out[1][-3000:]
  said = [line for line in rerun_out[0].splitlines() if line.startswith("stop requested: saved step")]
  assert len(said) == 1, rerun_out[0][-3000:]
  saved = int(said[0].split("saved step ")[1].split(";")[0])
  steps = sorted(int(d) for d in storage.listdir(storage.join(killed, paths.SUBDIR)) if d.isdigit())
  assert saved >= 5 and steps[-1] == saved, (saved, steps)
