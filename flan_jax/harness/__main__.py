"""`python -m flan_jax.harness --model_args checkpoint=PATH[,batch_size=N] --tasks T [lm-eval's flags]`.

lm-evaluation-harness's own command line (`lm-eval run`), with the model "flan_jax" (FlanJaxLM) registered and
chosen: every other flag is lm-eval's (--include_path for local task YAMLs, --output_path, --log_samples, ...).
"""

import sys

from flan_jax import startup

if __name__ == "__main__":  # before TensorFlow and JAX load: Ctrl-C and TF's start-up lines stay quiet
  startup.prepare()

from lm_eval import __main__ as lm_eval_main  # noqa: E402

from flan_jax.harness import lm  # noqa: E402  (importing it registers "flan_jax")

MODEL = "flan_jax"


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
        raise SystemExit(f"error: python -m flan_jax.harness runs the {MODEL} model only, not --model {value}; use "
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


def main(argv: list[str]) -> None:
  sys.argv = lm_eval_argv(argv)
  startup.enable_compilation_cache()
  lm_eval_main.cli_evaluate()


if __name__ == "__main__":
  main(sys.argv[1:])
