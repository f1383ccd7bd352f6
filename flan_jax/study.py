"""The FLAN paper's experiments in one command: plan a study's training and eval jobs, check its held-out
clusters for contamination, run the jobs resumably (or print them for a launcher), and write the report.

`python -m flan_jax.study --gin_file=studies/miniature.gin [--gin.STUDY_DIR=DIR] [--gin.study.action=print]`

A study crosses model sizes x seeds x held-out clusters x conditions (base, instructions, notemplate,
datasetname) and numbers of tuning clusters. Each (size, seed) starts from one base model: pretrained
by the study (a next-token phase on plain text) or a given checkpoint. Every job is a call of the
training or eval binary with gin files and bindings; a finished job leaves `done.json` in its
directory, so a rerun skips it (and an interrupted training job resumes from its checkpoints).
"""

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import gin

from flan_jax import cli

cli.import_tensorflow_quietly()

import seqio  # noqa: E402

from flan_jax import files, task_info
from flan_jax.checkpoints import pretrained
from flan_jax.checkpoints import store as checkpointing
from flan_jax.data import contamination
from flan_jax.errors import UserError  # noqa: E402
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.reports import study_report
from flan_jax.text import formats
from flan_jax.text import vocabulary as vocabularies
from flan_jax.training import trainer

CONDITIONS = ("base", "instructions", "notemplate", "datasetname")
ACTIONS = ("run", "print", "report")
DONE = "done.json"


@dataclasses.dataclass(frozen=True)
class Design:
  """What a study gin file binds (see `study`)."""
  name: str
  output_dir: str
  sizes: Mapping[str, Sequence[str]]
  seeds: Sequence[int]
  held_out: Sequence[str]
  conditions: Sequence[str]
  cluster_counts: Sequence[int]
  base_checkpoints: Optional[Mapping[str, str]]
  pretrain: Mapping[str, Any]
  tune: Mapping[str, Any]
  evaluate: Mapping[str, Any]
  train_gin: Sequence[str]
  eval_gin: Sequence[str]
  tuning_mixture: str
  variant_mixture: str
  cluster_count_mixture: str
  eval_mixture: str
  contamination_ngram: int
  max_dirty_fraction: float


@dataclasses.dataclass(frozen=True)
class Job:
  """One binary call: `kind` is "train" or "eval"; `directory` holds its outputs and its done marker."""
  id: str
  kind: str
  gin_files: tuple
  bindings: tuple  # (gin name, Python value) pairs
  directory: str
  after: tuple = ()  # ids of the jobs whose outputs it reads

  def command(self) -> str:
    binary = "flan_jax.train" if self.kind == "train" else "flan_jax.eval"
    args = [f"--gin_file={f}" for f in self.gin_files] + [f"--gin.{k}={_flag_value(v)}" for k, v in self.bindings]
    return " ".join(["python", "-m", binary] + [_shell_word(a) for a in args])

  def spec(self) -> dict:
    return {"id": self.id, "kind": self.kind, "gin_files": list(self.gin_files),
            "bindings": {k: v for k, v in self.bindings}}


def _flag_value(value: Any) -> str:
  """A binding as the binaries' --gin.NAME=VALUE takes it: a plain string needs no quotes there."""
  if isinstance(value, str) and cli.as_gin_value(value) == repr(value):
    return value
  return repr(value)


def _shell_word(arg: str) -> str:
  """`arg` quoted for a POSIX shell, in double quotes where that reads better than shlex's."""
  if arg == shlex.quote(arg) or any(c in arg for c in '\\"$`!'):
    return shlex.quote(arg)
  return f'"{arg}"'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One evaluated model of the study (a row of the report's manifest)."""
  size: str
  seed: int
  held_out: str
  condition: str
  n_clusters: int
  checkpoint: str
  eval_dir: str
  train_job: Optional[str]  # None for the base model
  mixture: Optional[str]

  @property
  def id(self) -> str:
    return f"{self.size}/seed{self.seed}/{self.held_out}/{self.condition}/k{self.n_clusters}"


@gin.configurable
def study(name: str = gin.REQUIRED, output_dir: str = gin.REQUIRED, *,
          sizes: Mapping[str, Sequence[str]] = gin.REQUIRED,
          seeds: Sequence[int] = (0,),
          held_out: Sequence[str] = gin.REQUIRED,
          conditions: Sequence[str] = CONDITIONS,
          cluster_counts: Sequence[int] = (),
          base_checkpoints: Optional[Mapping[str, str]] = None,
          pretrain: Mapping[str, Any] = None,
          tune: Mapping[str, Any] = gin.REQUIRED,
          evaluate: Mapping[str, Any] = gin.REQUIRED,
          train_gin: Sequence[str] = ("runs/finetune.gin",),
          eval_gin: Sequence[str] = ("runs/eval.gin",),
          tuning_mixture: str = "embedded_no_{held_out}",
          variant_mixture: str = "{mixture}_{variant}",
          cluster_count_mixture: str = "embedded_no_{held_out}_clusters{count}",
          eval_mixture: str = "embedded_eval_{held_out}_scoring",
          contamination_ngram: int = 13,
          max_dirty_fraction: float = 0.01,
          action: str = "run") -> dict:
  """Plans the study and runs it (`action="run"`), prints its jobs ("print") or reports what is done ("report").

  `sizes` maps a size name to its model gin files; `base_checkpoints` (size -> a flan_jax run, a Hugging
  Face directory or a GGUF file) replaces the pretraining phase, whose gin bindings are `pretrain`
  (tuning jobs from a given checkpoint also bind PRETRAINED, which gin/runs/finetune_hf.gin reads).
  `tune` and `evaluate` are the bindings of every tuning and eval job (steps, batch, lengths, learning
  rate, eval examples...). The mixture names are format strings over {held_out}, {mixture}, {variant}
  and {count}. `cluster_counts` adds instruction-tuned runs on the first K tuning clusters.
  """
  if action not in ACTIONS:
    raise UserError(f"study.action={action!r}; choose one of {', '.join(ACTIONS)}")
  design = Design(name, output_dir, dict(sizes), list(seeds), list(held_out), list(conditions),
                  list(cluster_counts), base_checkpoints and dict(base_checkpoints), dict(pretrain or {}),
                  dict(tune), dict(evaluate), list(train_gin), list(eval_gin), tuning_mixture, variant_mixture,
                  cluster_count_mixture, eval_mixture, contamination_ngram, max_dirty_fraction)
  check(design)
  jobs, cells = plan(design)
  if action == "print":
    print_jobs(jobs)
    return {}
  if action == "run":
    check_contamination(design, cells)
    run_jobs(jobs)
  return write_report(design, cells, jobs)


def check(design: Design) -> None:
  bad = [c for c in design.conditions if c not in CONDITIONS]
  if bad:
    raise UserError(f"study.conditions has {bad}; choose from {', '.join(CONDITIONS)}")
  if not design.sizes or not design.seeds or not design.held_out:
    raise UserError("a study needs at least one size (study.sizes), seed (study.seeds) and held-out cluster "
                    "(study.held_out)")
  if design.base_checkpoints is None and "TRAIN_STEPS" not in design.pretrain:
    raise UserError("study.pretrain (the bindings of the pretraining job, TRAIN_STEPS among them) or "
                    "study.base_checkpoints (size -> checkpoint) is required: every tuned model starts from a "
                    "base model")
  missing = set(design.sizes) - set(design.base_checkpoints or design.sizes)
  if missing:
    raise UserError(f"study.base_checkpoints has no checkpoint for size(s) {sorted(missing)}")
  if len(set(design.seeds)) != len(design.seeds):
    raise UserError(f"study.seeds={list(design.seeds)} repeats a seed")


# Planning.


def _mixture(design: Design, held_out: str, condition: str, count: Optional[int]) -> str:
  mixture = design.tuning_mixture.format(held_out=held_out)
  if count is not None:
    return design.cluster_count_mixture.format(held_out=held_out, count=count, mixture=mixture)
  if condition == "instructions":
    return mixture
  return design.variant_mixture.format(mixture=mixture, variant=condition, held_out=held_out)


def num_clusters(mixture: str) -> int:
  """The number of distinct clusters among a mixture's tasks (as the collection registered them)."""
  tasks = seqio.get_mixture_or_task(mixture)
  names = [t.name for t in getattr(tasks, "tasks", [tasks])]
  return len({task_info.lookup(n).cluster for n in names})


def plan(design: Design) -> tuple[list[Job], list[Cell]]:
  """Every job in an order that runs each after the jobs it reads, and every evaluated cell."""
  runs = os.path.join(design.output_dir, "runs")
  jobs, cells = [], []
  for size, model_gin in design.sizes.items():
    for seed in design.seeds:
      group = f"{size}_seed{seed}"
      if design.base_checkpoints:
        base, base_job = design.base_checkpoints[size], None
      else:
        base = os.path.join(runs, group, "pretrain")
        base_job = f"{group}/pretrain"
        jobs.append(Job(base_job, "train", tuple(design.train_gin) + tuple(model_gin),
                        tuple(dict(design.pretrain, MODEL_DIR=base, **{"train.seed": seed}).items()), base))
      start = base if not base_job else os.path.join(base, checkpointing.SUBDIR, str(design.pretrain["TRAIN_STEPS"]))
      for held_out in design.held_out:
        group_cells = []
        wanted = [(c, None) for c in design.conditions] + [
            ("instructions", k) for k in design.cluster_counts]
        for condition, count in wanted:
          evals = os.path.join(design.output_dir, "evals", group, held_out)
          if condition == "base":
            group_cells.append(Cell(size, seed, held_out, "base", 0, base, os.path.join(evals, "base"), base_job,
                                    None))
            continue
          mixture = _mixture(design, held_out, condition, count)
          label = condition if count is None else f"clusters{count}"
          directory = os.path.join(runs, group, mixture)  # one run per mixture, whichever cells read it
          job_id = f"{group}/{mixture}"
          bindings = dict(design.tune, MODEL_DIR=directory, MIXTURE_OR_TASK_NAME=mixture,
                          INITIAL_CHECKPOINT_PATH=start, **{"train.seed": seed})
          if not base_job:  # runs/finetune_hf.gin reads the model's config and tokenizer from PRETRAINED
            bindings["PRETRAINED"] = start
          job = Job(job_id, "train", tuple(design.train_gin) + tuple(model_gin), tuple(bindings.items()),
                    directory, after=(base_job,) if base_job else ())
          if job not in jobs:
            jobs.append(job)
          group_cells.append(Cell(size, seed, held_out, condition, num_clusters(mixture), directory,
                                  os.path.join(evals, label), job_id, mixture))
        eval_dir = os.path.join(design.output_dir, "evals", group, held_out)
        bindings = dict(design.evaluate, CHECKPOINT_PATH=[c.checkpoint for c in group_cells],
                        EVAL_OUTPUT_DIR=[c.eval_dir for c in group_cells],
                        MIXTURE_OR_TASK_NAME=design.eval_mixture.format(held_out=held_out),
                        **{"evaluate.run_names": [c.id.replace("/", "_") for c in group_cells]})
        jobs.append(Job(f"{group}/{held_out}_eval", "eval", tuple(design.eval_gin), tuple(bindings.items()),
                        eval_dir, after=tuple(sorted({c.train_job for c in group_cells if c.train_job}))))
        cells += group_cells
  return jobs, cells


def print_jobs(jobs: Sequence[Job]) -> None:
  """One line per job, each after the jobs it reads; finished jobs are marked. Then what training costs."""
  for job in jobs:
    state = "done" if is_done(job) else "todo"
    after = f" after {', '.join(job.after)}" if job.after else ""
    print(f"# {job.id} [{state}]{after}")
    print(job.command())
  steps, tokens = training_budget(jobs)
  print(f"# {sum(j.kind == 'train' for j in jobs)} training jobs: {steps:,} steps, {tokens:,} tokens "
        f"(steps x batch x sequence length); {sum(j.kind == 'eval' for j in jobs)} eval jobs")


def training_budget(jobs: Sequence[Job]) -> tuple[int, int]:
  """Total steps and tokens (rows x sequence length, padding included) of the training jobs."""
  steps = tokens = 0
  for job in jobs:
    bindings = dict(job.bindings)
    if job.kind == "train" and "TRAIN_STEPS" in bindings:
      steps += bindings["TRAIN_STEPS"]
      lengths = bindings.get("TASK_FEATURE_LENGTHS") or {}
      tokens += bindings["TRAIN_STEPS"] * bindings.get("BATCH_SIZE", 0) * sum(lengths.values())
  return steps, tokens


# Contamination.


def check_contamination(design: Design, cells: Sequence[Cell]) -> dict:
  """Refuses a held-out cluster whose datasets or examples appear in a tuning mixture; records the checks."""
  path = os.path.join(design.output_dir, "contamination.json")
  records = _read_json(path) or {}
  for mixture, held_out in sorted({(c.mixture, c.held_out) for c in cells if c.mixture}):
    key = f"{mixture} vs {held_out}"
    done = records.get(key)
    if done and (done["n"], done["max_dirty_fraction"]) == (design.contamination_ngram, design.max_dirty_fraction):
      continue
    eval_mixture = design.eval_mixture.format(held_out=held_out)
    eval_tasks = [t.name for t in seqio.get_mixture_or_task(eval_mixture).tasks]
    records[key] = contamination.check(mixture, eval_tasks, n=design.contamination_ngram,
                                       max_dirty_fraction=design.max_dirty_fraction)
    _write_json(path, records)
  return records


# Running.


def is_done(job: Job) -> bool:
  done = _read_json(os.path.join(job.directory, DONE))
  if done is None:
    return False
  if done["spec"] != _jsonable(job.spec()):
    raise UserError(f"job {job.id} in {job.directory} was finished with other settings; use another STUDY_DIR "
                    "or delete that directory to redo it")
  return True


def run_jobs(jobs: Sequence[Job]) -> None:
  total = len(jobs)
  for i, job in enumerate(jobs, 1):
    if is_done(job):
      print(f"study: [{i}/{total}] {job.id}: done before, skipped", flush=True)
      continue
    print(f"study: [{i}/{total}] {job.id}: {job.command()}", flush=True)
    began = time.time()
    run_job(job)
    _write_json(os.path.join(job.directory, DONE), {"spec": job.spec(), "seconds": time.time() - began})
    print(f"study: [{i}/{total}] {job.id}: finished in {time.time() - began:.0f}s", flush=True)


def run_job(job: Job) -> None:
  """Runs the binary's function in this process, under the job's own gin configuration."""
  gin.clear_config()
  bindings = [f"{k} = {v!r}" for k, v in job.bindings]
  logging.disable(logging.ERROR)  # gin logs every search-path miss before it finds a file
  try:
    gin.parse_config_files_and_bindings(list(job.gin_files), bindings, finalize_config=True)
  finally:
    logging.disable(logging.NOTSET)
  try:
    if job.kind == "train":
      state = trainer.train()
      steps = dict(job.bindings).get("TRAIN_STEPS")
      if steps is not None and int(state.step) != steps:  # stopped by SIGTERM after saving, as the trainer exits
        print(f"study: {job.id} stopped at step {int(state.step)}; rerun the same command to go on", flush=True)
        raise SystemExit(0)
    else:
      evaluation.evaluate()
  finally:  # a job's settings end with it: its gin config, the vocabulary and format an eval took from a checkpoint
    gin.clear_config()
    vocabularies.set_default(None)
    formats.set_default(None)


# Reporting.


def manifest(design: Design, cells: Sequence[Cell], jobs: Sequence[Job]) -> dict:
  """The report's input: every finished cell (its eval is done), with the model's parameter count."""
  done_evals = {j.directory for j in jobs if j.kind == "eval" and is_done(j)}
  seconds = {j.id: (_read_json(os.path.join(j.directory, DONE)) or {}).get("seconds") for j in jobs}
  rows = []
  for cell in cells:
    if os.path.dirname(cell.eval_dir) not in done_evals:
      continue
    rows.append({"id": cell.id, "size": cell.size, "params": _params(cell), "seed": cell.seed,
                 "condition": cell.condition, "held_out": cell.held_out, "n_clusters": cell.n_clusters,
                 "eval_dir": cell.eval_dir, "checkpoint": cell.checkpoint, "mixture": cell.mixture,
                 "trained_on": _trained_on(cell)})
  return {"name": design.name, "cells": rows, "job_seconds": seconds,
          "wall_seconds_of_jobs": sum(s for s in seconds.values() if s)}


def _params(cell: Cell) -> Optional[int]:
  """The parameter count of the cell's model: from its run's record, or from a pretrained model's config."""
  if pretrained.is_pretrained(cell.checkpoint):
    return pretrained.pretrained_model_config(cell.checkpoint).num_params()
  config = checkpointing.recorded_model_config(checkpointing.model_dir_of(cell.checkpoint))
  return config.num_params() if config else None


def _trained_on(cell: Cell) -> Optional[dict]:
  if cell.train_job is None or cell.condition == "base":
    return None
  return _read_json(os.path.join(cell.checkpoint, "trained_on.json"))


def write_report(design: Design, cells: Sequence[Cell], jobs: Sequence[Job]) -> dict:
  rows = manifest(design, cells, jobs)
  if not rows["cells"]:
    raise UserError(f"no finished eval in {design.output_dir} yet: run the study first (study.action='run')")
  _write_json(os.path.join(design.output_dir, "study.json"), rows)
  report = study_report.write(rows, os.path.join(design.output_dir, "report"))
  print(f"study: report in {os.path.join(design.output_dir, 'report')} "
        f"({len(rows['cells'])} cells, jobs took {rows['wall_seconds_of_jobs']:.0f}s)", flush=True)
  return report


def _jsonable(value):
  return json.loads(json.dumps(value))


def _read_json(path: str) -> Optional[Any]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value: Any) -> None:
  """Whole or not at all (flan_jax.files): a done.json cut short must not mark its job finished."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_json(path, value)


def main(flags: cli.Flags) -> None:
  del flags  # everything comes from gin
  study()


if __name__ == "__main__":
  cli.run(main, sys.argv[1:])
