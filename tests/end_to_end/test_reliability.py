"""The promises of docs/reliability.md that need the binaries: damaged runs, a full disk, one trainer
per MODEL_DIR, bad task files from gin, and one line on stderr for each of them."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from flan_jax import checkpoints
from flan_jax.checkpoints import store as checkpointing
from flan_jax.errors import UserError
from flan_jax.training import run_lock
from tests.checks import assert_trees_equal, cannot_set_up, one_line, run_main
from tests.conftest import xla_flags
from tests.end_to_end.test_binaries import LENGTHS, ROOT, TINY, binary

TRAIN = [*TINY, "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", "--gin.BATCH_SIZE=8", LENGTHS]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished tiny run with checkpoints at steps 1 and 2."""
  model_dir = str(tmp_path_factory.mktemp("run"))
  out = binary("train", *TRAIN, f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=1")
  assert out.returncode == 0, out.stderr[-3000:]
  return model_dir


def _truncate_params(model_dir, step):
  for root, _, files in os.walk(os.path.join(model_dir, "checkpoints", str(step), checkpointing.PARAMS)):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))


def test_every_checkpoint_damaged_refuses_then_set_aside_starts_fresh(run_dir, tmp_path, capfd):
  from flan_jax import train
  model_dir = str(tmp_path / "run")
  shutil.copytree(run_dir, model_dir)
  for step in (1, 2):
    _truncate_params(model_dir, step)
  args = [*TRAIN, f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=1"]
  code, err = run_main(train, args, capfd)
  line = one_line(err)
  assert code == 2 and "checkpoint step(s) [2, 1]" in line and "on_damaged_checkpoint=set_aside" in line
  assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["1", "2"]  # nothing touched

  import gin

  from flan_jax import cli
  gin.clear_config()
  try:
    cli.run(train.main, [*args, "--gin.train.on_damaged_checkpoint='set_aside'"])
  finally:
    gin.clear_config()
  assert "set aside damaged checkpoint step(s) [2, 1]" in capfd.readouterr().out
  assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["1", "1.damaged", "2", "2.damaged", "3"]


def _train_ok(*args):
  """The train binary (one device, as the run it resumes), expected to finish; returns what it printed."""
  out = binary("train", *args)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def _position(model_dir, step):
  return os.path.join(model_dir, checkpoints.INPUT_POSITIONS, "process_0", str(step))


OTHER_LENGTHS = {"inputs": 64, "targets": 16}


@pytest.mark.parametrize("change, recorded", [
    ("--gin.BATCH_SIZE=4", True),
    (f"--gin.TASK_FEATURE_LENGTHS={OTHER_LENGTHS}", True),
    ("--gin.BATCH_SIZE=4", False),  # a position saved before positions recorded their settings
])
def test_a_rerun_with_another_batch_size_or_feature_lengths_goes_on_from_the_step(run_dir, tmp_path, change, recorded):
  """The run was saved at steps 1 and 2 with BATCH_SIZE=8; rerun with 4 (or other TASK_FEATURE_LENGTHS) it used to
  die in a TensorFlow traceback restoring the input position. It goes on from step 2 with the data read again from
  its beginning, says so in one line, and counts what it read; the new settings are recorded with the new positions."""
  from flan_jax.data import accounting
  from flan_jax.data import pipeline as data_lib
  import flan_tasks  # noqa: F401  (registers the embedded tasks, for the tally below)
  model_dir = str(tmp_path / "run")
  shutil.copytree(run_dir, model_dir)
  if not recorded:
    for step in (1, 2):
      os.remove(os.path.join(_position(model_dir, step), data_lib.POSITION_SETTINGS))
  args = [*TRAIN, f"--gin.MODEL_DIR={model_dir}", "--gin.CHECKPOINT_PERIOD=1", change]
  out = _train_ok(*args, "--gin.TRAIN_STEPS=4")
  assert "resumed from step 2" in out
  (line,) = [line for line in out.splitlines() if "input position" in line]
  batch, lengths = (4, {"inputs": 96, "targets": 16}) if "BATCH_SIZE" in change else (8, OTHER_LENGTHS)
  if not recorded:
    assert "the input position of step 2 does not fit this run's batches" in line, line
  elif batch == 4:
    assert "the input position of step 2 was saved with BATCH_SIZE=8, and this run has BATCH_SIZE=4" in line, line
  else:
    assert (f"was saved with TASK_FEATURE_LENGTHS={{'inputs': 96, 'targets': 16}}, and this run has "
            f"TASK_FEATURE_LENGTHS={OTHER_LENGTHS}") in line, line
  assert "the training data starts again from its beginning at step 2, so examples of the steps before it are " \
         "trained on again; rerun with " in line, line
  # What it trained on: step 2's tally, then the first two batches of the new pipeline.
  tally = accounting.Tally("embedded_no_nli_clusters1")
  assert tally.load(os.path.join(_position(run_dir, 2), accounting.LOCAL_FILE))
  fresh = data_lib.get_dataset("embedded_no_nli_clusters1", lengths, "train", batch, seed=0, with_task_index=True)
  for local in fresh.take(2).as_numpy_iterator():
    tally.count(local)
  assert json.load(open(os.path.join(model_dir, accounting.FILE))) == json.loads(json.dumps(tally.summary(4)))
  if not (recorded and batch == 4):
    return
  # Rerun with the new settings: step 4's position is restored, silently; without it, step 3's is restored and one
  # batch read, which gives the same step 5.
  again = str(tmp_path / "again")
  shutil.copytree(model_dir, again)
  shutil.rmtree(_position(again, 4))
  from concurrent.futures import ThreadPoolExecutor
  with ThreadPoolExecutor(2) as pool:  # two independent processes
    runs = [pool.submit(_train_ok, *TRAIN, f"--gin.MODEL_DIR={d}", "--gin.CHECKPOINT_PERIOD=1", change,
                        "--gin.TRAIN_STEPS=5") for d in (model_dir, again)]
    out, out_again = (r.result() for r in runs)
  assert "resumed from step 4" in out and "input position" not in out, out
  assert "no saved input position for step 4: restored step 3's and read 1 batch" in out_again, out_again
  from tests.end_to_end.test_binaries import _final_params
  (step_a, a), (step_b, b) = _final_params(model_dir), _final_params(again)
  assert step_a == step_b == 5
  assert_trees_equal(a, b)


def test_a_second_trainer_on_the_same_model_dir_is_refused(run_dir, capfd):
  from flan_jax import train
  with run_lock.hold(run_dir):  # this process plays the running trainer
    code, err = run_main(train, [*TRAIN, f"--gin.MODEL_DIR={run_dir}", "--gin.TRAIN_STEPS=3"], capfd)
  line = one_line(err)
  assert code == 2 and f"in use by pid {os.getpid()} on host {socket.gethostname()}" in line, line
  with run_lock.hold(run_dir):  # released when the block ended
    pass


def test_a_killed_trainer_leaves_no_lock_behind(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import time
          from flan_jax.training import run_lock
          with run_lock.hold({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(600)
          """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"in use by pid {holder.pid}"):
      with run_lock.hold(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with run_lock.hold(str(tmp_path)):  # the kernel dropped the dead process's lock
    assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == os.getpid()


def test_a_broken_task_file_bound_in_gin_is_one_line(tmp_path, capfd):
  from flan_jax import train
  data = tmp_path / "qa.jsonl"
  data.write_text('{"question": "a?", "reply": "b"}\n{"question": "c?", "reply": \n')
  gin_file = tmp_path / "user_task.gin"
  gin_file.write_text(textwrap.dedent(f"""
      import flan_tasks.files
      MIXTURE_OR_TASK_NAME = @flan_tasks.files.jsonl_task()
      flan_tasks.files.jsonl_task.name = 'broken_gin_qa'
      flan_tasks.files.jsonl_task.paths = '{data}'
      flan_tasks.files.jsonl_task.templates = ['Q: {{question}}']
      flan_tasks.files.jsonl_task.answer_field = 'reply'
      """))
  code, err = run_main(train, [*TINY, f"--gin_file={gin_file}", f"--gin.MODEL_DIR={tmp_path / 'run'}",
                               "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", LENGTHS], capfd)
  line = one_line(err)
  assert code == 2 and f"{data}" in line and "row 2: not valid JSON" in line, line


def test_an_eval_of_a_checkpoint_that_does_not_fit_is_only_the_message(run_dir, tmp_path):
  old_run = str(tmp_path / "old")  # a run from before runs recorded their model config
  shutil.copytree(run_dir, old_run)
  os.remove(os.path.join(old_run, checkpoints.run_record.MODEL_CONFIG))
  out = binary("eval", "--gin_file=runs/eval.gin", "--gin_file=models/small.gin", f"--gin.CHECKPOINT_PATH={old_run}",
               "--gin.MIXTURE_OR_TASK_NAME=embedded_eval_nli", timeout=300)
  line = one_line(out.stderr)  # no "Event loop is closed" tracebacks before it
  assert out.returncode == 2 and "does not match the model config" in line


def test_the_catalogue_prints_only_the_catalogue():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  out = subprocess.run([sys.executable, "-m", "flan_tasks"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and out.stderr == "" and out.stdout.startswith("== flan datasets ==")


def _can_mount_tmpfs(directory) -> bool:
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {directory}"],
                         capture_output=True)
  return probe.returncode == 0


def _size(path) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


STEPS = 8  # of the interrupted runs below, and of the straight run they must end as


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """(step, parameters, optimizer state) of TRAIN run straight through to step STEPS."""
  from tests.end_to_end.test_binaries import final_state
  model_dir = str(tmp_path_factory.mktemp("straight") / "run")
  _train_ok(*TRAIN, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_PERIOD=100")
  return final_state(model_dir)


def test_a_full_disk_is_one_line_and_the_rerun_resumes(run_dir, straight, tmp_path):
  """Trains on a tmpfs (in a private mount namespace) with room for one step's state, not two."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if shutil.which("unshare") is None or not _can_mount_tmpfs(disk):
    cannot_set_up("needs unshare and a tmpfs mount in a user namespace")
  # What one saved step writes (checkpoint and input position), measured on the same run.
  step_bytes = (_size(os.path.join(run_dir, "checkpoints", "1"))
                + _size(os.path.join(run_dir, checkpoints.INPUT_POSITIONS, "process_0", "1")))
  filler = step_bytes + 2**20  # removed before the rerun, which then has room for two steps at once
  disk_kib = (filler + step_bytes * 3 // 2 + 2**20) // 1024  # + 1 MiB for the run record and metrics
  model_dir, out_dir = disk / "run", tmp_path / "out"
  args = " ".join(shlex.quote(a) for a in [*TRAIN, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={STEPS}",
                                           "--gin.CHECKPOINT_PERIOD=1", "--gin.CHECKPOINTS_TO_KEEP=None"])
  train = f"{sys.executable} -m flan_jax.train {args}"
  script = textwrap.dedent(f"""
      mount -t tmpfs -o size={disk_kib}k tmpfs {disk}
      head -c {filler} /dev/zero > {disk}/filler
      {train} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc
      cp -r {model_dir} {out_dir}
      rm {disk}/filler
      {train} --gin.CHECKPOINTS_TO_KEEP=1 > {tmp_path}/second.out 2> {tmp_path}/second.err
      echo $? > {tmp_path}/second.rc
      ls {model_dir}/checkpoints > {tmp_path}/left.txt
      cp -r {model_dir} {tmp_path}/after
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, check=True, timeout=600)
  read = lambda name: (tmp_path / name).read_text()
  line = one_line(read("first.err"))  # no orbax logs, no "Event loop is closed" tracebacks
  assert read("first.rc").strip() == "5", read("first.err")[-3000:]
  complete = sorted(int(d) for d in os.listdir(out_dir / "checkpoints") if d.isdigit())
  assert complete and f"no space left on device in {model_dir}" in line
  last = complete[-1]
  assert (f"while writing checkpoint {last + 1}; " in line
          or f"while writing the input position of step {last + 1}; " in line
          or f"while writing the input position of step {last}; " in line), line
  assert f"the last complete checkpoint is step {last}." in line, line
  assert read("second.rc").strip() == "0", read("second.err")[-3000:]
  assert f"resumed from step {last}" in read("second.out")
  assert read("left.txt").split() == [str(STEPS)]  # the half-written step was cleaned up, nothing else left
  from tests.end_to_end.test_binaries import final_state
  step, params, opt_state = final_state(str(tmp_path / "after"))
  assert step == straight[0] == STEPS
  assert_trees_equal((params, opt_state), straight[1:])


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
  """The train binary sent SIGTERM after it logged step 3 of STEPS, started in a directory that holds a user's
  own tasks.py (which must not shadow the collection: imported, it would end the run before step 1); then the
  same command rerun."""
  cwd = tmp_path_factory.mktemp("user_cwd")
  (cwd / "tasks.py").write_text('raise SystemExit("the user\'s tasks.py was imported")\n')
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())

  def command(model_dir):
    return [sys.executable, "-m", "flan_jax.train", *TRAIN, f"--gin.MODEL_DIR={model_dir}",
            f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_PERIOD=100", "--gin.train.log_every=1"]

  def start(model_dir):
    return subprocess.Popen(command(model_dir), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

  proc, seen = start(cwd / "run"), []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith("step 3/"):
      proc.send_signal(signal.SIGTERM)
      break
  rest, err = proc.communicate(timeout=120)
  saved = sorted(int(d) for d in os.listdir(cwd / "run" / "checkpoints") if d.isdigit())
  rerun = start(cwd / "run")
  reran = rerun.communicate(timeout=300)
  return {"code": proc.returncode, "seen": "".join(seen), "rest": rest, "err": err, "saved": saved,
          "rerun": (rerun.returncode, *reran), "cwd": cwd}


def test_sigterm_saves_at_the_next_step_exits_0_and_the_rerun_ends_as_a_straight_run(sigterm_run, straight):
  from tests.end_to_end.test_binaries import final_state
  run = sigterm_run
  assert f"step 3/{STEPS}" in run["seen"], run["seen"][-3000:]
  assert run["code"] == 0 and run["err"] == "", run["err"][-3000:]
  # The signal came after step 3's line; the step then running (4) is the next boundary, one more at most.
  assert len(run["saved"]) == 1 and run["saved"][0] in (3, 4, 5), run["saved"]
  assert f"saved step {run['saved'][0]}" in run["rest"], run["rest"]
  code, out, err = run["rerun"]
  assert code == 0 and err == "" and f"step {STEPS}/{STEPS}" in out, err[-3000:]
  assert f"resumed from step {run['saved'][0]} in {run['cwd'] / 'run'}" in out, out
  step, params, opt_state = final_state(str(run["cwd"] / "run"))
  assert step == straight[0] == STEPS
  assert_trees_equal((params, opt_state), straight[1:])


def test_a_users_tasks_module_does_not_shadow_the_collection(sigterm_run):
  assert sigterm_run["code"] == 0 and f"step 1/{STEPS}" in sigterm_run["seen"], sigterm_run["seen"][-3000:]


def test_the_binaries_import_no_collection_the_gin_files_do():
  for binary_module in ("train", "eval"):
    source = open(os.path.join(ROOT, "flan_jax", f"{binary_module}.py")).read()
    assert "flan_tasks" not in source
  for run_file in ("finetune.gin", "eval.gin"):
    assert "import flan_tasks" in open(os.path.join(ROOT, "gin", "runs", run_file)).read()
