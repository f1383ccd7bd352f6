"""Benchmark the eval binary's batches cut to length buckets against batches padded to the configured length.

    python scripts/benchmark_eval.py  # models/tiny.gin, random weights, 256 examples of varied lengths, 256 + 64
    python scripts/benchmark_eval.py --gin_file=models/smollm2_135m.gin --gin.ModelConfig.num_layers=4 \\
        --gin.ModelConfig.dtype="'float32'"  # a 42M-parameter SmolLM2-shaped model
    python scripts/benchmark_eval.py --mixture=embedded_eval_sentiment_scoring  # the eval's own examples

Both sides run flan_jax.evaluation.batches.BatchRunner over the same enumerated examples, as seqio.Evaluator
hands them to the eval: with `bucketed=False` (every batch padded to TASK_FEATURE_LENGTHS, as the eval did
before buckets) and as the eval runs it now (each batch cut to its bucket; scoring rows in order of length).
`score` is rank classification (decoding.score_targets, one row per example and option, as seqio's scoring
datasets hold them), `predict` greedy decoding with the KV cache up to the targets length. Each side runs once
to compile every shape it needs (the first pass), then --repeats times, the two sides taking turns;
examples/s is the examples (dataset rows, as the eval's progress counts them) over the median pass. The scores
must agree to float tolerance and the decoded tokens exactly.

Examples are random tokens by default: prompts whose lengths are log-normal around --prompt_median (clipped to
--inputs), each followed by --options options of 1 to --option_max tokens and EOS. --mixture takes a registered
seqio task or mixture's --split instead, through the eval's own feature converter (its vocabulary, bytes by
default, must fit the model's). Gin flags as in benchmark_train.py (default models/tiny.gin). Prints a table and
writes the figures as JSON (--output).
"""

import argparse
import functools
import json
import logging
import os
import statistics
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(SCRIPTS))
sys.path.insert(0, SCRIPTS)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from flan_jax import cli, startup  # noqa: E402

startup.import_tensorflow_quietly()

import benchmark_decode  # noqa: E402
import benchmark_train  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from flan_jax.data import pipeline as data_lib  # noqa: E402
from flan_jax.errors import UserError  # noqa: E402
from flan_jax.evaluation import batches  # noqa: E402
from flan_jax.model import decoding, partitioning  # noqa: E402
from flan_jax.model.transformer import ModelConfig, Transformer  # noqa: E402
import flan_tasks  # noqa: E402,F401  (registers the collections)

MODES = ("padded", "bucketed")
EOS = 1  # seqio's, and the byte vocabulary's


def synthetic_examples(args, vocab_size: int) -> dict[str, list[dict]]:
  """{kind: [features of the rows of one task]}: seqio PrefixLM rows (BOS, prompt, then target and EOS) of random
  tokens, right-padded to inputs + targets. Scoring repeats each prompt once per option, as a scoring task does."""
  rng = np.random.default_rng(args.seed)
  length = args.inputs + args.targets
  prompts = np.clip(np.rint(rng.lognormal(np.log(args.prompt_median), args.prompt_sigma, args.examples)),
                    1, args.inputs).astype(int)

  def rows(pairs) -> dict:
    out = {k: np.zeros((len(pairs), length), np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention")}
    for i, (prompt, target) in enumerate(pairs):
      whole = np.concatenate([prompt, target])[:length]
      out["decoder_target_tokens"][i, :len(whole)] = whole
      out["decoder_input_tokens"][i, :len(whole)] = np.concatenate([[0], whole[:-1]])
      out["decoder_loss_weights"][i, len(prompt):len(whole)] = 1
      out["decoder_causal_attention"][i, :len(prompt) + 1] = 1
    return out

  token = lambda n: rng.integers(3, vocab_size, size=n)
  prompt_tokens = [token(n) for n in prompts]
  option = lambda: np.append(token(int(rng.integers(1, args.option_max + 1))), EOS)
  return {"score": [rows([(p, option()) for p in prompt_tokens for _ in range(args.options)])],
          "predict": [rows([(p, option()) for p in prompt_tokens])]}


def mixture_examples(args, vocab_size: int) -> dict[str, list]:
  """{kind: [enumerated dataset of each task]}: the eval's own datasets of a task or mixture's split."""
  vocab = data_lib.vocabulary(args.mixture)
  if vocab.vocab_size > vocab_size:
    raise UserError(f"{args.mixture}'s vocabulary has {vocab.vocab_size} ids; the model's {vocab_size}")
  evaluator = seqio.Evaluator(
      args.mixture, feature_converter=data_lib.feature_converter(pack=False, vocab=vocab), eval_split=args.split,
      sequence_length={"inputs": args.inputs, "targets": args.targets}, num_examples=args.examples,
      use_cached=False)
  out = {"score": [], "predict": []}
  for task in evaluator.eval_tasks:
    types = {m.model_output_type for m in task.metric_objs}
    kind = "score" if seqio.metrics.ModelOutputType.SCORE in types else "predict"
    out[kind].append(evaluator.cached_model_datasets[task.name])
  return out


def as_dataset(rows) -> tf.data.Dataset:
  """An enumerated dataset of the rows (a dataset from seqio.Evaluator already is one)."""
  return tf.data.Dataset.from_tensor_slices(rows).enumerate() if isinstance(rows, dict) else rows


def counted(fn, lengths: list):
  """fn, noting in `lengths` the batch length of every shape it is compiled for (it runs only when traced)."""
  def traced(params, batch):
    lengths.append(batch["decoder_input_tokens"].shape[1])
    return fn(params, batch)
  return traced


def bench_kind(kind: str, tasks: list, model: Transformer, params, mesh, rules, args) -> list[dict]:
  """One row per mode for one kind of eval work, and a comparison row: speed-up and whether the outputs agree."""
  if kind == "score":
    fn, kwargs = functools.partial(decoding.score_targets, model), {"sort": True}
  else:
    fn = functools.partial(decoding.greedy_decode, model, max_decode_length=args.targets, eos_id=EOS,
                           vocab_size=model.config.vocab_size)
    kwargs = {"reads": batches.prompt_lengths}  # as flan_jax.evaluation.evaluator builds its two runners
  datasets = [as_dataset(t) for t in tasks]
  runners, lengths = {}, {mode: [] for mode in MODES}
  for mode in MODES:
    runners[mode] = batches.BatchRunner(counted(fn, lengths[mode]), mesh, rules, args.batch_size,
                                        bucketed=mode == "bucketed", **kwargs)
    runners[mode].params = params

  def run(mode) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = [dict(runners[mode](ds)) for ds in datasets]
    return time.perf_counter() - start, [o[i] for o in outputs for i in sorted(o)]

  first, outputs = {}, {}
  for mode in MODES:
    first[mode], outputs[mode] = run(mode)
  seconds = {mode: [] for mode in MODES}
  for _ in range(args.repeats):
    for mode in MODES:
      seconds[mode].append(run(mode)[0])
  n = len(outputs["padded"])
  rows = [{"kind": kind, "mode": mode, "examples": n, "first_pass_seconds": first[mode],
           "seconds": statistics.median(seconds[mode]), "examples_per_second": n / statistics.median(seconds[mode]),
           "compiled_lengths": sorted(lengths[mode])} for mode in MODES]
  padded, bucketed = (np.asarray(outputs[mode], np.float64) for mode in MODES)
  if kind == "score":
    agree = bool(np.allclose(padded, bucketed, rtol=1e-4, atol=1e-4))
  else:
    agree = bool(np.array_equal(padded, bucketed))
  rows.append({"kind": kind, "mode": "compare", "speedup": rows[0]["seconds"] / rows[1]["seconds"],
               "first_pass_speedup": first["padded"] / first["bucketed"], "agree": agree,
               "max_abs_difference": float(np.max(np.abs(padded - bucketed))) if n else 0.0})
  return rows


def format_table(rows: list[dict]) -> str:
  line = lambda *cols: "{:<8} {:>8} {:>14} {:>14} {:>10} {:>10} {:>8} {:>8}  {}".format(*cols)
  lines = [line("kind", "examples", "padded ex/s", "bucketed ex/s", "padded s", "bucket s", "speedup", "agree",
                "first pass (compiles): padded, bucketed s; bucketed lengths compiled"),
           line(*["-" * w for w in (8, 8, 14, 14, 10, 10, 8, 8)], "-" * 4)]
  for kind in dict.fromkeys(r["kind"] for r in rows):
    padded, bucketed, compare = (next(r for r in rows if r["kind"] == kind and r["mode"] == m)
                                 for m in MODES + ("compare",))
    lines.append(line(kind, padded["examples"], f"{padded['examples_per_second']:,.1f}",
                      f"{bucketed['examples_per_second']:,.1f}", f"{padded['seconds']:.2f}",
                      f"{bucketed['seconds']:.2f}", f"{compare['speedup']:.2f}x", "yes" if compare["agree"] else "NO",
                      f"{padded['first_pass_seconds']:.1f}, {bucketed['first_pass_seconds']:.1f}; "
                      f"{bucketed['compiled_lengths']}"))
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="gin: --gin_file=PATH (repeatable; default models/tiny.gin), --gin.NAME=VALUE, --gin_search_paths=DIR,DIR")
  parser.add_argument("--inputs", type=int, default=256, help="TASK_FEATURE_LENGTHS['inputs']")
  parser.add_argument("--targets", type=int, default=64, help="TASK_FEATURE_LENGTHS['targets']")
  parser.add_argument("--batch_size", type=int, default=32, help="EVAL_BATCH_SIZE")
  parser.add_argument("--examples", type=int, default=256, help="examples (per task with --mixture)")
  parser.add_argument("--prompt_median", type=float, default=60, help="median prompt tokens")
  parser.add_argument("--prompt_sigma", type=float, default=0.6, help="spread of the log prompt length")
  parser.add_argument("--options", type=int, default=2, help="options scored per example")
  parser.add_argument("--option_max", type=int, default=4, help="most tokens of an option (before EOS)")
  parser.add_argument("--kinds", default="score,predict", help="score, predict or both")
  parser.add_argument("--mixture", default=None, help="a registered task or mixture's examples instead")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="benchmark_eval.json")
  gin_args, rest = benchmark_train.split_gin_flags(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  kinds = args.kinds.split(",")
  if not set(kinds) <= {"score", "predict"}:
    raise UserError(f"--kinds={args.kinds}: choose score, predict or score,predict")
  logging.getLogger("absl").setLevel(logging.ERROR)  # seqio warns once per task that it is uncached
  cli.configure_gin(cli.parse_flags(gin_args))
  cfg, mesh, rules = ModelConfig(), partitioning.make_mesh(), partitioning.axis_rules()
  if args.batch_size % partitioning.data_parallel_size(mesh, rules):
    raise UserError(f"--batch_size={args.batch_size} must divide by the data-parallel size "
                    f"{partitioning.data_parallel_size(mesh, rules)}")
  model = Transformer(cfg)
  params = benchmark_decode.random_params(model, mesh, rules)
  examples = (mixture_examples if args.mixture else synthetic_examples)(args, cfg.vocab_size)
  rows = []
  for kind in kinds:
    if examples[kind]:
      rows += bench_kind(kind, examples[kind], model, params, mesh, rules, args)

  device = jax.devices()[0]
  result = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "num_devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "params": cfg.num_params(), "batch_size": args.batch_size,
            "lengths": {"inputs": args.inputs, "targets": args.targets},
            "examples": (f"{args.mixture} ({args.split})" if args.mixture else
                         f"random, prompt median {args.prompt_median} (sigma {args.prompt_sigma}), "
                         f"{args.options} options of 1-{args.option_max} tokens"),
            "results": rows}
  print(f"{result['device']} x{result['num_devices']} ({os.cpu_count()} CPUs), {cfg.num_params():,} parameters, "
        f"batch {args.batch_size} x ({args.inputs} + {args.targets}), examples: {result['examples']}")
  print(format_table(rows))
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.output}")
  return result


if __name__ == "__main__":
  benchmark_train.run_main(main)
