"""Running a study: the `study` gin entry point, its jobs run in this process one after another (each under its
own gin configuration), a `done.json` per finished job so a rerun skips it, the contamination checks before
anything trains, and the manifest and report of the finished cells.

STUDY_DIR may be a local folder or a bucket (gs://, s3://): every file here is read and written through
flan_jax.storage, each one whole (one object upload in a bucket), so a reader never sees half a manifest and a
done marker exists only once its job has finished.
"""

import dataclasses
import json
import logging
import time
from typing import Any, Mapping, Optional, Sequence

import gin
import seqio

from flan_jax import storage
from flan_jax.checkpoints import paths, restore, run_record
from flan_jax.data import contamination
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator
from flan_jax.reports import study as study_report
from flan_jax.studies.design import ACTIONS, CONDITIONS, Cell, Design, Job, check, plan, training_budget
from flan_jax.training import trainer

DONE = "done.json"
TFDS_DATA_DIR = "TFDS_DATA_DIR"  # where the data lives, not what a job computes: a done job is done wherever it is


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
  `output_dir` (STUDY_DIR) is a local folder or a bucket (gs://bucket/path). A TFDS_DATA_DIR the study's gin
  binds (`tfds_data_dir.path`) is where its contamination check and every job read TFDS data (each job gets it
  as a binding; moving the data does not make finished jobs run again).
  """
  if action not in ACTIONS:
    raise UserError(f"study.action={action!r}; choose one of {', '.join(ACTIONS)}")
  design = Design(name, output_dir, dict(sizes), list(seeds), list(held_out), list(conditions),
                  list(cluster_counts), base_checkpoints and dict(base_checkpoints), dict(pretrain or {}),
                  dict(tune), dict(evaluate), list(train_gin), list(eval_gin), tuning_mixture, variant_mixture,
                  cluster_count_mixture, eval_mixture, contamination_ngram, max_dirty_fraction)
  check(design)
  jobs, cells = plan(design)
  tfds_data_dir = data_lib.use_tfds_data_dir()  # the study's TFDS_DATA_DIR: for its checks, and each job's
  if tfds_data_dir is not None:
    jobs = [dataclasses.replace(j, bindings=j.bindings + ((TFDS_DATA_DIR, tfds_data_dir),)) for j in jobs]
  if action == "print":
    print_jobs(jobs)
    return {}
  if action == "run":
    check_contamination(design, cells)
    run_jobs(jobs)
  return write_report(design, cells, jobs)


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


def check_contamination(design: Design, cells: Sequence[Cell]) -> dict:
  """Refuses a held-out cluster whose datasets or examples appear in a tuning mixture; records the checks."""
  path = storage.join(design.output_dir, "contamination.json")
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


def is_done(job: Job) -> bool:
  done = _read_json(storage.join(job.directory, DONE))
  if done is None:
    return False
  if _what(done["spec"]) != _what(_jsonable(job.spec())):
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
    _write_json(storage.join(job.directory, DONE), {"spec": job.spec(), "seconds": time.time() - began})
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
      evaluator.evaluate()
  finally:  # a job's gin config ends with it (the vocabulary and format it chose end with train() / evaluate())
    gin.clear_config()


def manifest(design: Design, cells: Sequence[Cell], jobs: Sequence[Job]) -> dict:
  """The report's input: every finished cell (its eval is done), with the model's parameter count."""
  done_evals = {j.directory for j in jobs if j.kind == "eval" and is_done(j)}
  seconds = {j.id: (_read_json(storage.join(j.directory, DONE)) or {}).get("seconds") for j in jobs}
  rows = []
  for cell in cells:
    if storage.dirname(cell.eval_dir) not in done_evals:
      continue
    rows.append({"id": cell.id, "size": cell.size, "params": _params(cell), "seed": cell.seed,
                 "condition": cell.condition, "held_out": cell.held_out, "n_clusters": cell.n_clusters,
                 "eval_dir": cell.eval_dir, "checkpoint": cell.checkpoint, "mixture": cell.mixture,
                 "trained_on": _trained_on(cell)})
  return {"name": design.name, "cells": rows, "job_seconds": seconds,
          "wall_seconds_of_jobs": sum(s for s in seconds.values() if s)}


def _params(cell: Cell) -> Optional[int]:
  """The parameter count of the cell's model: from its run's record, or from a pretrained model's config."""
  if paths.is_pretrained(cell.checkpoint):
    return restore.pretrained_model_config(cell.checkpoint).num_params()
  config = run_record.recorded_model_config(paths.model_dir_of(cell.checkpoint))
  return config.num_params() if config else None


def _trained_on(cell: Cell) -> Optional[dict]:
  if cell.train_job is None or cell.condition == "base":
    return None
  return run_record.read_trained_on(cell.checkpoint)


def write_report(design: Design, cells: Sequence[Cell], jobs: Sequence[Job]) -> dict:
  rows = manifest(design, cells, jobs)
  if not rows["cells"]:
    raise UserError(f"no finished eval in {design.output_dir} yet: run the study first (study.action='run')")
  _write_json(storage.join(design.output_dir, "study.json"), rows)
  report = study_report.write(rows, storage.join(design.output_dir, "report"))
  print(f"study: report in {storage.join(design.output_dir, 'report')} "
        f"({len(rows['cells'])} cells, jobs took {rows['wall_seconds_of_jobs']:.0f}s)", flush=True)
  return report


def _what(spec: dict) -> dict:
  """A job's spec without TFDS_DATA_DIR, as finished jobs are compared."""
  return {**spec, "bindings": {k: v for k, v in spec["bindings"].items() if k != TFDS_DATA_DIR}}


def _jsonable(value):
  return json.loads(json.dumps(value))


def _read_json(path: str) -> Optional[Any]:
  if not storage.exists(path):
    return None
  return storage.read_json(path)


def _write_json(path: str, value: Any) -> None:
  """Whole or not at all (flan_jax.storage): a done.json cut short must not mark its job finished, and a
  study.json is one object in a bucket, never half of one."""
  storage.makedirs(storage.dirname(path))
  storage.write_json(path, value)
