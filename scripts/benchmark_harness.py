"""Benchmark lm-evaluation-harness's own `hf` backend against flan_jax's (`python -m flan_jax.harness`) on the same
model and the same local tasks, each run as the whole process a user starts.

Usage: python scripts/benchmark_harness.py --model=DIR_OR_GGUF [--questions=100] [--prompts=32] [--max_gen_toks=32]
       [--batch_size=16] [--backends=hf,flan_jax] [--workdir=DIR] [--output=FILE]

A .gguf model is first exported to a float32 Hugging Face directory (python -m flan_jax.export), so both backends
read the same weights and the same tokenizer. The tasks are written here and read offline through --include_path:
multiple-choice arithmetic questions (four options each, so four requests) and generation prompts (greedy,
--max_gen_toks tokens or a newline). Reported per backend: the process's wall time, lm-eval's own evaluation time
(model loading included), requests and requests/s over both, and the scores; then whether the backends agree
(the same acc and acc_norm, the same generations, the largest log-likelihood difference of an option).
"""

import argparse
import glob
import json
import os
import platform
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("bench_mc", "bench_gen")


def hf_directory(model: str, workdir: str) -> str:
  """`model` itself, or for a .gguf file its float32 Hugging Face export under `workdir` (made once)."""
  if not model.endswith(".gguf"):
    return model
  out = os.path.join(workdir, "hf")
  if not os.path.exists(os.path.join(out, "config.json")):
    subprocess.run([sys.executable, "-m", "flan_jax.export", "--gin_file=runs/export.gin",
                    f"--gin.CHECKPOINT_PATH={os.path.abspath(model)}", f"--gin.OUTPUT_DIR={out}",
                    "--gin.EXPORT_DTYPE='float32'"], cwd=ROOT, check=True)
  return out


def write_tasks(directory: str, questions: int, prompts: int, max_gen_toks: int) -> int:
  """The two tasks' YAML and JSONL files in `directory`; returns the number of requests they make."""
  os.makedirs(directory, exist_ok=True)
  rng = random.Random(0)
  mc = []
  for _ in range(questions):
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    choices = list(dict.fromkeys([a + b, a + b + rng.randint(1, 9), abs(a - b), a * b]))
    while len(choices) < 4:
      choices.append(choices[-1] + 7)
    rng.shuffle(choices)
    mc.append({"question": f"What is {a} plus {b}?", "choices": [str(c) for c in choices],
               "label": choices.index(a + b)})
  subjects = ["the sea", "a library", "winter mornings", "the moon", "a small town", "bread", "rain", "music"]
  gen = [{"prompt": f"Write one sentence about {subjects[i % len(subjects)]}, number {i + 1}:", "target": ""}
         for i in range(prompts)]
  for name, rows in (("bench_mc", mc), ("bench_gen", gen)):
    with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  common = lambda name: (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
                         f"{os.path.join(directory, name + '.jsonl')}\ntest_split: test\n")
  with open(os.path.join(directory, "bench_mc.yaml"), "w") as f:
    f.write(common("bench_mc") + "output_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  with open(os.path.join(directory, "bench_gen.yaml"), "w") as f:
    f.write(common("bench_gen") + "output_type: generate_until\ndoc_to_text: \"{{prompt}}\"\n"
            "doc_to_target: \"{{target}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n"
            f"  max_gen_toks: {max_gen_toks}\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
  return 4 * questions + prompts


def command(backend: str, model: str, tasks: str, out: str, batch_size: int) -> list[str]:
  common = ["--tasks", ",".join(TASKS), "--include_path", tasks, "--batch_size", str(batch_size), "--output_path",
            out, "--log_samples"]
  if backend == "hf":
    return [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
            f"pretrained={model},dtype=float32", "--device", "cpu", *common]
  return [sys.executable, "-m", "flan_jax.harness", "--model_args", f"checkpoint={model},dtype=float32", *common]


def run(backend: str, model: str, tasks: str, out: str, batch_size: int, requests: int) -> dict:
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  start = time.perf_counter()
  done = subprocess.run(command(backend, model, tasks, out, batch_size), cwd=ROOT, env=env, capture_output=True,
                        text=True)
  wall = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f"{backend} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  results, = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
  with open(results) as f:
    report = json.load(f)
  samples = {}
  for task in TASKS:
    path, = glob.glob(os.path.join(out, "**", f"samples_{task}_*.jsonl"), recursive=True)
    with open(path) as f:
      samples[task] = {s["doc_id"]: s["filtered_resps"] for s in map(json.loads, f)}
  evaluation = float(report.get("total_evaluation_time_seconds", "nan"))
  return {"backend": backend, "wall_s": round(wall, 2), "evaluation_s": round(evaluation, 2), "requests": requests,
          "requests_per_s": round(requests / wall, 2), "requests_per_s_evaluation": round(requests / evaluation, 2),
          "acc": report["results"]["bench_mc"]["acc,none"], "acc_norm": report["results"]["bench_mc"]["acc_norm,none"],
          "_samples": samples}


def agreement(a: dict, b: dict) -> dict:
  """Whether two backends' runs agree: scores, generations, and the largest option log-likelihood difference."""
  worst = 0.0
  for doc, options in a["_samples"]["bench_mc"].items():
    for mine, theirs in zip(options, b["_samples"]["bench_mc"][doc], strict=True):
      worst = max(worst, abs(float(mine[0]) - float(theirs[0])))
  gen_a, gen_b = a["_samples"]["bench_gen"], b["_samples"]["bench_gen"]
  return {"same_acc": a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"],
          "same_generations": sum(gen_a[d] == gen_b[d] for d in gen_a), "generations": len(gen_a),
          "max_option_loglikelihood_diff": worst}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="a Hugging Face directory or a .gguf file")
  parser.add_argument("--questions", type=int, default=100)
  parser.add_argument("--prompts", type=int, default=32)
  parser.add_argument("--max_gen_toks", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--backends", default="hf,flan_jax")
  parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "flan_jax_bench_harness"))
  parser.add_argument("--output", help="write the rows as JSON here")
  args = parser.parse_args()
  model = hf_directory(args.model, args.workdir)
  tasks = os.path.join(args.workdir, "tasks")
  requests = write_tasks(tasks, args.questions, args.prompts, args.max_gen_toks)
  rows = []
  for backend in args.backends.split(","):
    out = os.path.join(args.workdir, f"out_{backend}_{int(time.time())}")
    rows.append(run(backend, model, tasks, out, args.batch_size, requests))
  print(f"{requests} requests ({args.questions} questions x 4 options, {args.prompts} generations of up to "
        f"{args.max_gen_toks} tokens), batch {args.batch_size}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs")
  print(f"{'backend':<10} {'wall s':>8} {'eval s':>8} {'req/s':>8} {'req/s eval':>11} {'acc':>7} {'acc_norm':>9}")
  for r in rows:
    print(f"{r['backend']:<10} {r['wall_s']:>8.1f} {r['evaluation_s']:>8.1f} {r['requests_per_s']:>8.1f} "
          f"{r['requests_per_s_evaluation']:>11.1f} {r['acc']:>7.4f} {r['acc_norm']:>9.4f}")
  agree = agreement(rows[0], rows[1]) if len(rows) == 2 else None
  if agree:
    print(f"agreement: same acc/acc_norm {agree['same_acc']}, {agree['same_generations']}/{agree['generations']} "
          "generations the same, largest option log-likelihood difference "
          f"{agree['max_option_loglikelihood_diff']:.2e}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                 "agreement": agree, "model": args.model, "questions": args.questions, "prompts": args.prompts,
                 "max_gen_toks": args.max_gen_toks, "batch_size": args.batch_size, "cpus": os.cpu_count()}, f,
                indent=2)


if __name__ == "__main__":
  main()
