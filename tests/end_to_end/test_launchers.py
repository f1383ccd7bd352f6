"""Tests for scripts/launch_tpu_vm.py and scripts/launch_slurm.py, run as subprocesses with
--dry-run, or against fake gcloud/sbatch/srun programs that a real bash drives.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from tests import conftest

REPO = pathlib.Path(conftest.ROOT)
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

import launch_common  # noqa: E402  (needs the path above)

ZONE = "us-central2-b"
TPU = ["--name", "flan-v4", "--zone", ZONE, "--accelerator", "v4-32"]
GCLOUD = "gcloud compute tpus tpu-vm"
SIMPLE_JOB = ["--gin_file=gin/runs/finetune.gin", "--gin_file=gin/models/small.gin",
              "--gin.MODEL_DIR='gs://bucket/run'"]
# Flags a shell could mangle: quotes of both kinds, $, backquotes, backslashes, globs, !, spaces.
NASTY_JOB = [
    "--gin_file=gin/runs/finetune.gin",
    "--gin.MODEL_DIR='gs://bucket/run one'",
    '--gin.PREFIX="it\'s $HOME `id`"',
    "--gin.PATTERN='a*b?[c]' ; touch INJECTED && echo hi | cat > x",
    "--gin.BANG='wow!'",
    "--gin.SLASH='back\\slash\\\\ \\n'",
    "--gin.EMPTY=''",
    "--gin.LIST=[1, 2, 3]",
]

FAKE_TOOL = r'''
"""A stand-in for gcloud, sbatch and srun: records its argv; ssh runs --command in bash."""
import json, os, pathlib, shutil, subprocess, sys

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps([tool] + args) + "\n")
home = pathlib.Path(os.environ.get("FAKE_HOME", "."))
if tool == "gcloud":
  verb = args[3]
  if verb == "describe":
    sys.exit(int(os.environ.get("FAKE_DESCRIBE_RC", "1")))
  if verb == "scp":
    *sources, dest = [a for a in args[4:] if not a.startswith("--")]
    target = home / dest.split(":", 1)[1]
    for src in sources:
      copy = shutil.copytree if os.path.isdir(src) else shutil.copy2
      copy(src, target / os.path.basename(src))
  if verb == "ssh":
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    sys.exit(subprocess.call(["bash", "-c", command], cwd=home))
elif tool == "sbatch":
  rc = subprocess.call(["bash", args[-1]])
  print("4242;cluster" if rc == 0 else "", end="")
  sys.exit(rc)
elif tool == "srun":
  with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("GREETING", "VENV_ON")}) + "\n")
'''

FAKE_PYTHON = r'''
"""Stands in for the job: writes its argv as JSON to stdout, exits with $FAKE_JOB_RC."""
import json, os, sys
print(json.dumps(sys.argv[1:]), flush=True)
sys.exit(int(os.environ.get("FAKE_JOB_RC", "0")))
'''


_WORK_DIR = None  # where the launchers run unless a test says otherwise (not the repo)


@pytest.fixture(autouse=True, scope="module")
def no_real_tools(tmp_path_factory):
  """Puts failing gcloud/sbatch/srun first on PATH, so no test can reach the real ones."""
  global _WORK_DIR
  _WORK_DIR = tmp_path_factory.mktemp("work")
  guard = tmp_path_factory.mktemp("guard")
  for name in ("gcloud", "sbatch", "srun"):
    (guard / name).write_text(f"#!/bin/sh\necho 'the real {name} was called' >&2\nexit 99\n")
    (guard / name).chmod(0o755)
  old_path = os.environ["PATH"]
  os.environ["PATH"] = f"{guard}:{old_path}"
  yield
  os.environ["PATH"] = old_path


def launch(script, *argv, env=None, cwd=None):
  return subprocess.run([sys.executable, str(SCRIPTS / script), *argv], capture_output=True,
                        text=True, env=env, cwd=cwd or _WORK_DIR, timeout=60)


def dry_run_lines(*argv):
  done = launch("launch_tpu_vm.py", "--dry-run", *argv)
  assert done.returncode == 0, done.stderr
  return done.stdout.splitlines()


def remote_command(line):
  """The --command a printed ssh line sends, parsed the way a shell would."""
  argv = shlex.split(line)
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert "--worker=all" in argv
  return next(a for a in argv if a.startswith("--command="))[len("--command="):]


def job_flags(remote):
  """The job's flags in the remote run command (between the module and the `2>&1`)."""
  words = shlex.split(remote)
  start = words.index("-m") + 2
  return words[start:words.index("2>&1")]


@pytest.fixture
def src_dir(tmp_path):
  """A small git checkout: two tracked-looking entries and an ignored .venv."""
  src = tmp_path / "src"
  (src / "pkg").mkdir(parents=True)
  (src / "pkg" / "mod.py").write_text("x = 1\n")
  (src / "setup.py").write_text("# setup\n")
  (src / ".gitignore").write_text(".venv/\n")
  (src / ".venv").mkdir()
  (src / ".venv" / "big").write_text("not copied\n")
  subprocess.run(["git", "init", "-q", str(src)], check=True)
  return src


@pytest.fixture
def fakes(tmp_path):
  """A PATH with fake gcloud/sbatch/srun, a fake worker home and a fake job python."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  home.mkdir()
  tool = bin_dir / "fake_tool.py"
  tool.write_text(f"#!{sys.executable}\n{FAKE_TOOL}")
  for name in ("gcloud", "sbatch", "srun"):
    (bin_dir / name).symlink_to(tool)
  python = bin_dir / "job_python"
  python.write_text(f"#!{sys.executable}\n{FAKE_PYTHON}")
  for path in (tool, python):
    path.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home),
             FAKE_LOG=str(tmp_path / "calls.jsonl"))
  return {"env": env, "home": home, "python": str(python), "log": tmp_path / "calls.jsonl"}


def calls(fakes):
  return [json.loads(line) for line in fakes["log"].read_text().splitlines()]


# ------------------------------------------------------------------ shared quoting

@pytest.mark.parametrize("word", NASTY_JOB + ["", "plain", "a b", "'", '"', "$x", "!", "\\"])
def test_quote_round_trips_through_shlex_and_bash(word):
  quoted = launch_common.quote(word)
  assert shlex.split(quoted) == [word]
  echoed = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True)
  assert echoed.stdout == word


def test_quote_prefers_double_quotes_for_gin_strings():
  assert launch_common.quote("--gin.MODEL_DIR='gs://b/r'") == "\"--gin.MODEL_DIR='gs://b/r'\""
  assert launch_common.quote("--gin_file=gin/runs/finetune.gin") == (
      "--gin_file=gin/runs/finetune.gin")
  assert launch_common.quote("a b") == "'a b'"


def test_t5_version_comes_from_the_makefile(tmp_path):
  assert launch_common.MAKEFILE == str(REPO / "Makefile")
  assert launch_common.t5_version()[0].isdigit()
  makefile = tmp_path / "Makefile"
  makefile.write_text("PYTHON ?= python3\nT5_VERSION := 1.2.3\ninstall:\n\ttrue\n")
  assert launch_common.t5_version(str(makefile)) == "1.2.3"
  makefile.write_text("PYTHON ?= python3\n")
  with pytest.raises(ValueError, match="no `T5_VERSION := x` line"):
    launch_common.t5_version(str(makefile))
  with pytest.raises(ValueError, match="cannot read the t5 version"):
    launch_common.t5_version(str(tmp_path / "missing"))


# ------------------------------------------------------------------ TPU VM: dry run

def test_tpu_dry_run_prints_every_step(src_dir):
  lines = dry_run_lines(*TPU, "--spot", "--delete_after", "--src_dir", str(src_dir),
                        "--", *SIMPLE_JOB)
  assert len(lines) == 6
  assert lines[0] == (
      f"{GCLOUD} describe flan-v4 --zone={ZONE} '--format=value(state)' || "
      f"{GCLOUD} create flan-v4 --zone={ZONE} --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base --spot")
  assert lines[1] == f"{GCLOUD} ssh flan-v4 --zone={ZONE} --worker=all '--command=mkdir -p flan_jax'"
  assert lines[2] == (
      f"{GCLOUD} scp {src_dir}/.gitignore {src_dir}/pkg {src_dir}/setup.py flan-v4:flan_jax "
      f"--zone={ZONE} --worker=all --recurse")
  install = remote_command(lines[3])
  assert install.startswith("cd flan_jax && (test -x .venv/bin/python || (python3 -m pip ")
  for part in ("uv venv -q --seed --python 3.11 .venv",
               ".venv/bin/python -m pip install -q -e '.[tpu]' -f ",
               f".venv/bin/python -m pip install -q --no-deps t5=={launch_common.t5_version()}",
               "pip install -q babel nltk rouge-score sacrebleu scikit-learn pandas editdistance "
               "immutabledict"):
    assert part in install
  assert lines[4] == (
      f"{GCLOUD} ssh flan-v4 --zone={ZONE} --worker=all \"--command=cd flan_jax && "
      "set -o pipefail && mkdir -p logs && .venv/bin/python -u -m flan_jax.train "
      "--gin_file=gin/runs/finetune.gin --gin_file=gin/models/small.gin "
      "\\\"--gin.MODEL_DIR='gs://bucket/run'\\\" --multihost 2>&1 | "
      "tee -a logs/flan-v4-train.log\"")
  assert lines[5] == f"{GCLOUD} delete flan-v4 --zone={ZONE} --quiet"


def test_tpu_gin_flags_survive_both_shells():
  lines = dry_run_lines(*TPU, "--steps=run", "--", *NASTY_JOB)
  assert len(lines) == 1
  assert job_flags(remote_command(lines[0])) == NASTY_JOB + ["--multihost"]


def test_tpu_clone_instead_of_copy():
  lines = dry_run_lines(*TPU, "--steps=copy", "--repo_url", "https://example.com/flan_jax.git",
                        "--repo_ref", "v1.0", "--remote_dir", "code/flan", "--project", "p1",
                        "--", *SIMPLE_JOB)
  assert lines == [
      f"{GCLOUD} ssh flan-v4 --zone={ZONE} --project=p1 --worker=all '--command=("
      "test -d code/flan/.git || git clone -q https://example.com/flan_jax.git code/flan) && "
      "git -C code/flan fetch -q origin v1.0 && git -C code/flan checkout -q -f --detach "
      "FETCH_HEAD'"]


def test_tpu_clone_then_update_keeps_untracked_files(fakes, src_dir):
  """Clones a local repository on the fake worker, then fetches a new commit into it."""
  git = ["git", "-C", str(src_dir), "-c", "user.name=t", "-c", "user.email=t@example.com"]
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "one"], check=True)
  argv = [*TPU, "--steps=copy", "--repo_url", str(src_dir), "--", *SIMPLE_JOB]
  assert launch("launch_tpu_vm.py", *argv, env=fakes["env"]).returncode == 0
  remote = fakes["home"] / "flan_jax"
  assert (remote / "pkg" / "mod.py").exists()
  (remote / ".venv").mkdir()
  (src_dir / "new.py").write_text("y = 2\n")
  subprocess.run(git + ["add", "new.py"], check=True)
  subprocess.run(git + ["commit", "-qm", "two"], check=True)
  done = launch("launch_tpu_vm.py", *argv, env=fakes["env"])
  assert done.returncode == 0, done.stderr
  assert (remote / "new.py").exists() and (remote / ".venv").is_dir()


def test_tpu_eval_with_env_and_custom_install_and_log():
  lines = dry_run_lines(*TPU, "--steps=install,run", "--module", "flan_jax.eval", "--no_multihost",
                        "--install_cmd", "make install", "--python", "python3",
                        "--log_file", "eval.log", "--env", "TF_CPP_MIN_LOG_LEVEL=3",
                        "--env", "MSG=a b", "--",
                        "--gin_file=gin/runs/eval.gin", "--gin.CHECKPOINT_PATH='gs://b/r/ckpt'")
  assert remote_command(lines[0]) == "cd flan_jax && make install"
  run = remote_command(lines[1])
  assert run.endswith("2>&1 | tee -a eval.log")
  assert shlex.split(run)[:12] == [
      "cd", "flan_jax", "&&", "set", "-o", "pipefail", "&&", "mkdir", "-p", ".", "&&", "env"]
  assert job_flags(run) == ["--gin_file=gin/runs/eval.gin",
                            "--gin.CHECKPOINT_PATH='gs://b/r/ckpt'"]
  assert "env TF_CPP_MIN_LOG_LEVEL=3 'MSG=a b' python3 -u -m flan_jax.eval " in run


@pytest.mark.parametrize("accelerator,runtime", [
    ("v2-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_default_runtime(accelerator, runtime):
  lines = dry_run_lines("--name", "t", "--zone", ZONE, "--accelerator", accelerator,
                        "--preemptible", "--steps=create", "--", *SIMPLE_JOB)
  assert lines[0].endswith(f"--accelerator-type={accelerator} --version={runtime} --preemptible")


def test_tpu_explicit_runtime_and_create_flags():
  lines = dry_run_lines("--name", "t", "--zone", ZONE, "--accelerator", "v7x-64", "--version",
                        "my-runtime", "--create_flag=--network=net1", "--steps=create",
                        "--", *SIMPLE_JOB)
  assert lines[0].endswith("--accelerator-type=v7x-64 --version=my-runtime --network=net1")


def test_tpu_create_or_delete_alone_need_no_job_flags():
  assert dry_run_lines("--name", "t", "--zone", ZONE, "--steps=delete") == [
      f"{GCLOUD} delete t --zone={ZONE} --quiet"]
  assert dry_run_lines("--name", "t", "--zone", ZONE, "--accelerator", "v4-8",
                       "--steps=create")[0].startswith(f"{GCLOUD} describe t ")


# ------------------------------------------------------------------ TPU VM: fake gcloud

def test_tpu_dry_run_transcript_runs_in_bash(fakes, src_dir):
  """The printed lines, run as a bash script, drive gcloud as the launcher would."""
  argv = [*TPU, "--src_dir", str(src_dir), "--install_cmd", "touch installed",
          "--python", fakes["python"], "--delete_after", "--", *NASTY_JOB]
  transcript = "\n".join(dry_run_lines(*argv)) + "\n"
  done = subprocess.run(["bash", "-c", transcript], env=fakes["env"], capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  check_fake_tpu_run(fakes, created=True)


def test_tpu_real_run_reuses_slice_and_streams_log(fakes, src_dir):
  env = dict(fakes["env"], FAKE_DESCRIBE_RC="0")
  done = launch("launch_tpu_vm.py", *TPU, "--src_dir", str(src_dir), "--install_cmd",
                "touch installed", "--python", fakes["python"], "--", *NASTY_JOB, env=env)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1])[3:] == NASTY_JOB + ["--multihost"]
  check_fake_tpu_run(fakes, created=False)


def check_fake_tpu_run(fakes, created):
  verbs = [c[4] for c in calls(fakes)]
  assert verbs == (["describe"] + ["create"] * created + ["ssh", "scp", "ssh", "ssh"]
                   + ["delete"] * created)
  assert all("--worker=all" in c for c in calls(fakes) if c[4] in ("ssh", "scp"))
  remote = fakes["home"] / "flan_jax"
  assert sorted(p.name for p in remote.iterdir()) == [  # no INJECTED, x: nothing ran
      ".gitignore", "installed", "logs", "pkg", "setup.py"]
  logged = json.loads((remote / "logs" / "flan-v4-train.log").read_text())
  assert logged == ["-u", "-m", "flan_jax.train", *NASTY_JOB, "--multihost"]


def test_tpu_failed_job_still_deletes(fakes, src_dir):
  env = dict(fakes["env"], FAKE_DESCRIBE_RC="0", FAKE_JOB_RC="3")
  (fakes["home"] / "flan_jax").mkdir()
  done = launch("launch_tpu_vm.py", *TPU, "--steps=run", "--python", fakes["python"],
                "--delete_after", "--", *SIMPLE_JOB, env=env)
  assert done.returncode == 3  # the job's status comes back through tee (pipefail)
  assert [c[4] for c in calls(fakes)] == ["ssh", "delete"]


# ------------------------------------------------------------------ SLURM

SLURM = ["--nodes", "2", "--gpus_per_node", "8", "--partition", "gpu", "--time", "04:00:00",
         "--account", "proj", "--workdir", "/shared/flan_jax"]


def slurm_dry_run(*argv):
  done = launch("launch_slurm.py", "--dry-run", *argv)
  assert done.returncode == 0, done.stderr
  return done.stdout.splitlines()


def test_slurm_dry_run_prints_script_and_sbatch():
  lines = slurm_dry_run(*SLURM, "--venv", "/shared/venv", "--", *SIMPLE_JOB)
  assert lines[0] == "cat > flan_jax.sbatch <<'FLAN_JAX_SBATCH'"
  assert lines[-2:] == ["FLAN_JAX_SBATCH", "sbatch --parsable flan_jax.sbatch"]
  script = lines[1:-2]
  assert script[0] == "#!/bin/bash"
  assert [line for line in script if line.startswith("#SBATCH")] == [
      "#SBATCH --job-name=flan_jax",
      "#SBATCH --nodes=2",
      "#SBATCH --ntasks-per-node=8",
      "#SBATCH --gpus-per-node=8",
      "#SBATCH --partition=gpu",
      "#SBATCH --account=proj",
      "#SBATCH --time=04:00:00",
      "#SBATCH --chdir=/shared/flan_jax",
      "#SBATCH --output=slurm-%x-%j.out",
  ]
  assert script[-2:] == [
      "source /shared/venv/bin/activate",
      "srun --kill-on-bad-exit=1 python -u -m flan_jax.train --gin_file=gin/runs/finetune.gin "
      "--gin_file=gin/models/small.gin \"--gin.MODEL_DIR='gs://bucket/run'\" --multihost"]


def test_slurm_options_container_env_and_gpu_type():
  lines = slurm_dry_run("--nodes", "4", "--gpus_per_node", "4", "--gpu_type", "h100",
                        "--cpus_per_task", "12", "--name", "ft", "--script", "jobs/ft.sbatch",
                        "--sbatch_option=--qos=high", "--setup", "module load cuda/12.4",
                        "--container_image", "nvcr.io#nvidia/jax:24.04", "--workdir", "/w",
                        "--env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
                        "--", *NASTY_JOB)
  assert lines[0] == "cat > jobs/ft.sbatch <<'FLAN_JAX_SBATCH'"
  assert lines[-1] == "sbatch --parsable jobs/ft.sbatch"
  for expected in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=4",
                   "#SBATCH --gpus-per-node=h100:4", "#SBATCH --cpus-per-task=12",
                   "#SBATCH --job-name=ft", "#SBATCH --qos=high", "module load cuda/12.4",
                   "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true"):
    assert expected in lines
  srun = shlex.split(lines[-3])
  assert srun[:9] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=12",
                      "--container-image=nvcr.io#nvidia/jax:24.04", "--container-mounts=/w:/w",
                      "--container-workdir=/w", "python", "-u", "-m"]
  assert srun[9:] == ["flan_jax.train", *NASTY_JOB, "--multihost"]


def test_slurm_transcript_and_real_submit_run_srun(fakes, tmp_path):
  """Runs the dry-run transcript in bash, then a real submit; fake sbatch runs the script."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text("export VENV_ON=yes\n")
  argv = [*SLURM, "--venv", str(venv), "--env", "GREETING=hello world"]
  transcript = "\n".join(slurm_dry_run(*argv, "--", *NASTY_JOB)) + "\n"
  work = tmp_path / "work"
  work.mkdir()
  done = subprocess.run(["bash", "-c", transcript], env=fakes["env"], cwd=work,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stdout == "4242;cluster"
  written = (work / "flan_jax.sbatch").read_text()
  done = launch("launch_slurm.py", *argv, "--script", str(tmp_path / "real.sbatch"), "--",
                *NASTY_JOB, env=fakes["env"])
  assert done.returncode == 0, done.stderr
  assert done.stdout == "4242\n"
  assert "log: /shared/flan_jax/slurm-flan_jax-4242.out" in done.stderr
  assert (tmp_path / "real.sbatch").read_text() == written
  expected_srun = ["srun", "--kill-on-bad-exit=1", "python", "-u", "-m", "flan_jax.train",
                   *NASTY_JOB, "--multihost"]
  environment = {"GREETING": "hello world", "VENV_ON": "yes"}
  assert calls(fakes) == [["sbatch", "--parsable", "flan_jax.sbatch"], expected_srun,
                          environment, ["sbatch", "--parsable", str(tmp_path / "real.sbatch")],
                          expected_srun, environment]


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("script,argv,message", [
    ("launch_tpu_vm.py", ["--zone", ZONE, "--accelerator", "v4-8"], "--name"),
    ("launch_tpu_vm.py", ["--name", "t", "--accelerator", "v4-8"], "--zone"),
    ("launch_tpu_vm.py", ["--name", "t", "--zone", ZONE, "--accelerator", "tpu4"], "format"),
    ("launch_tpu_vm.py", ["--name", "t", "--zone", ZONE, "--accelerator", "v4"], "format"),
    ("launch_tpu_vm.py", ["--name", "t", "--zone", ZONE, "--accelerator", "v9-8"], "--version"),
    ("launch_tpu_vm.py", ["--name", "t", "--zone", ZONE], "--accelerator"),
    ("launch_tpu_vm.py", ["--name", "Bad_Name", "--zone", ZONE, "--accelerator", "v4-8"], "--name"),
    ("launch_tpu_vm.py", ["--name", "t", "--zone", "nowhere", "--accelerator", "v4-8"], "--zone"),
    ("launch_tpu_vm.py", [*TPU, "--steps", "create,launch"], "--steps"),
    ("launch_tpu_vm.py", [*TPU, "--repo_ref", "main"], "--repo_url"),
    ("launch_tpu_vm.py", [*TPU, "--remote_dir", "../x"], "--remote_dir"),
    ("launch_tpu_vm.py", [*TPU, "--spot", "--preemptible"], "not allowed"),
    ("launch_tpu_vm.py", [*TPU, "--env", "1X=2"], "--env"),
    ("launch_slurm.py", ["--nodes", "0"], "at least 1"),
    ("launch_slurm.py", ["--nodes", "-2"], "at least 1"),
    ("launch_slurm.py", ["--gpus_per_node", "0"], "at least 1"),
    ("launch_slurm.py", ["--nodes", "two"], "invalid"),
    ("launch_slurm.py", ["--time", "4h"], "--time"),
    ("launch_slurm.py", ["--partition", "a b"], "--partition"),
    ("launch_slurm.py", ["--sbatch_option", "qos=high"], "--sbatch_option"),
])
def test_bad_input_is_a_one_line_error(script, argv, message):
  done = launch(script, *argv, "--dry-run", "--", *SIMPLE_JOB)
  assert done.returncode == 2 and done.stdout == ""
  last = done.stderr.strip().splitlines()[-1]
  assert "error:" in last and message in last


@pytest.mark.parametrize("script,argv", [("launch_tpu_vm.py", TPU), ("launch_slurm.py", [])])
@pytest.mark.parametrize("job", [[], ["--gin.X=1"]])
def test_job_flags_need_a_gin_file(script, argv, job):
  done = launch(script, *argv, "--dry-run", *(["--", *job] if job else []))
  assert done.returncode == 2 and "--gin_file" in done.stderr.splitlines()[-1]


def test_src_dir_must_be_a_git_checkout(tmp_path):
  done = launch("launch_tpu_vm.py", *TPU, "--src_dir", str(tmp_path), "--dry-run", "--",
                *SIMPLE_JOB)
  assert done.returncode == 2 and done.stdout == ""
  assert done.stderr.startswith("error: cannot list the files of --src_dir")


@pytest.mark.parametrize("script,argv,tool", [
    ("launch_tpu_vm.py", ["--name", "t", "--zone", ZONE, "--steps=delete"], "gcloud"),
    ("launch_slurm.py", [], "sbatch")])
def test_without_dry_run_the_tools_run_and_failures_show(script, argv, tool):
  done = launch(script, *argv, "--", *SIMPLE_JOB)  # reaches the failing guard tool
  assert done.returncode == 99
  assert f"the real {tool} was called" in done.stderr
