"""`python -m flan_jax.harness --model_args checkpoint=PATH[,batch_size=N] --tasks T [lm-eval's flags] [ours]`.

lm-evaluation-harness's own command line (`lm-eval run`) with the model "flan_jax" (FlanJaxLM) registered and
chosen: every other flag is lm-eval's (--include_path for local task YAMLs, --output_path, --log_samples, ...).
Ours, as the other commands take them: `--gin_file=PATH` / `--gin.NAME=VALUE` for the mesh and model settings
(`--gin.make_mesh.fsdp=4`, `--gin.ModelConfig.attention='cudnn'`; a flan_jax run's recorded model config is
used as recorded), and `--multihost` or `--coordinator_address/--num_processes/--process_id` to run on several
hosts: every host runs the same command, the model is one sharded computation across them, and only the first
host prints lm-eval's table and writes its files.

Mistakes show as one line and exit code 2 with nothing written (flan_jax.cli): an unknown task (with lm-eval's
close matches), a checkpoint path that holds no model, --apply_chat_template on a model without a chat template,
a task whose dataset is not available offline. lm-eval's log lines are held until the model receives its first
request, so such a line stands alone.
"""

import difflib
import functools
import logging
import os
import sys
from typing import Optional

from flan_jax import cli, startup

if __name__ == "__main__":  # before JAX loads: Ctrl-C stays one line (the harness never imports TensorFlow)
  startup.prepare(tensorflow=False)

import datasets  # noqa: E402
import jax  # noqa: E402
from lm_eval import __main__ as lm_eval_main  # noqa: E402

from flan_jax.errors import UserError, chain, first_line  # noqa: E402
from flan_jax.harness import lm  # noqa: E402  (importing it registers "flan_jax")

MODEL = "flan_jax"


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """(flan_jax's flags, lm-eval's): ours are the gin and multi-host flags of flan_jax.cli."""
  ours, theirs, args = [], [], list(argv)
  while args:
    arg = args.pop(0)
    name = arg.split("=", 1)[0]
    if name.startswith("--gin.") or name in cli.SWITCHES:
      ours.append(arg)
    elif name in cli.VALUE_FLAGS:
      ours.append(arg)
      if "=" not in arg and args:
        ours.append(args.pop(0))
    else:
      theirs.append(arg)
  return ours, theirs


def lm_eval_argv(argv: list[str]) -> list[str]:
  """lm-eval's argv for ours: the `run` subcommand with `--model flan_jax` (another --model is refused).

  lm-eval passes its own --batch_size (default 1) beside the model arguments, so a batch_size among them moves
  to --batch_size, and without either the batch is lm.DEFAULT_BATCH_SIZE rows.
  """
  args, out, batch_size = list(argv[1:] if argv and argv[0] == "run" else argv), [], None
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--model" or arg.startswith("--model="):
      value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
      if value != MODEL:
        raise UserError(f"python -m flan_jax.harness runs the {MODEL} model only, not --model {value}; use "
                        "lm-eval itself for other backends")
      i += 1 if "=" in arg else 2
      continue
    out.append(arg)
    i += 1
    if arg in ("--model_args", "-a"):
      while i < len(args) and not args[i].startswith("-"):
        kept = []
        for item in args[i].split(","):
          if item.startswith("batch_size="):
            batch_size = item.split("=", 1)[1]
          elif item:
            kept.append(item)
        if kept:
          out.append(",".join(kept))
        i += 1
  if not any(a == "--batch_size" or a.startswith("--batch_size=") for a in out):
    out += ["--batch_size", batch_size or str(lm.DEFAULT_BATCH_SIZE)]
  return ["lm-eval", "run", "--model", MODEL] + out


def evaluate(lm_eval_args: list[str], flags: cli.Flags) -> None:
  """lm-eval's `run` with our model, after cli.run has read the gin and multi-host flags (`flags`)."""
  del flags
  sys.argv = lm_eval_argv(lm_eval_args)
  if jax.process_index() != 0:  # lm-eval's rule for a model split over processes: only LOCAL_RANK 0 reports
    os.environ["LOCAL_RANK"] = str(jax.process_index())
  lm_eval_main.setup_logging()
  logger = logging.getLogger("lm_eval")
  handlers = list(logger.handlers)
  logger.handlers = [lm.HeldUntilRunning(h) for h in handlers]
  parser = lm_eval_main.HarnessCLI()
  args = None
  bars = datasets.is_progress_bar_enabled()
  datasets.disable_progress_bars()  # "Generating test split": a task's first read would print it around the error
  try:
    args = parser.parse_args()
    parser.execute(args)
  except UserError:  # flan_jax's own line (a checkpoint, a model argument): what lm-eval logged is dropped
    raise
  except Exception as e:
    message = _user_message(e, args)
    if message is None:  # a bug: its traceback, after what lm-eval logged on the way
      lm.pass_on_held_logs()
      raise
    raise UserError(message) from e
  else:
    lm.pass_on_held_logs()
  finally:
    logger.handlers = handlers
    if bars:
      datasets.enable_progress_bars()


def _user_message(e: Exception, args) -> Optional[str]:
  """One line for what lm-eval raises on a mistake of the command line, or None."""
  if isinstance(e, ValueError) and str(e).startswith("Tasks not found:"):
    return _unknown_tasks(str(e).split(":", 1)[1], getattr(args, "include_path", None))
  dataset = _dataset_of_failed_download(e)
  if dataset is None:
    return None
  if any(isinstance(seen, ConnectionError) or type(seen).__name__ in _UNREACHABLE for seen in chain(e)):
    return (f"the dataset {dataset} of a task is not available offline ({first_line(e)[:200]}); run once with "
            "network to fill the Hugging Face cache, or point the task at local files (dataset_path: json with "
            "data_files) and pass --include_path")
  if any(isinstance(seen, FileNotFoundError) for seen in chain(e)):
    return f"a file of the dataset {dataset} of a task is missing ({first_line(e)[:200]}); check the task's data_files"
  return None


def _unknown_tasks(names: str, include_path: Optional[str]) -> str:
  """The unknown task names, each with lm-eval's closest registered names."""
  from lm_eval.tasks import TaskManager  # noqa: PLC0415  (indexing every task YAML takes seconds: on this error only)
  known = TaskManager(include_path=include_path).all_tasks
  parts = []
  for name in (n.strip() for n in names.split(",") if n.strip()):
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    parts.append(f"'{name}'" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
  where = "" if include_path else "; local task YAMLs need --include_path DIR"
  return f"unknown lm-eval task {', '.join(parts)}: `lm-eval ls tasks` lists them{where}"


# What `datasets` and `huggingface_hub` raise for a dataset they cannot reach (offline, or no network) and do not
# have in the cache.
_UNREACHABLE = ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError")


def _dataset_of_failed_download(e: BaseException) -> Optional[str]:
  """The dataset whose loading raised `e`, if it was raised while a task loaded its dataset."""
  for seen in chain(e):
    tb = seen.__traceback__
    while tb is not None:
      task = tb.tb_frame.f_locals.get("self")
      if tb.tb_frame.f_code.co_name == "download" and hasattr(task, "DATASET_PATH"):
        name = getattr(task, "DATASET_NAME", None)
        return str(task.DATASET_PATH) + (f" ({name})" if name else "")
      tb = tb.tb_next
  return None


def main(argv: list[str]) -> None:
  ours, theirs = split_argv(argv)
  cli.run(functools.partial(evaluate, theirs), ours, gin_file_required=False)


if __name__ == "__main__":
  main(sys.argv[1:])
