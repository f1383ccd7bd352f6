"""A study's design: what its gin file binds (`Design`), checked where it is declared, and the plan it
makes: every training and eval job (`Job`, a binary call with gin files and bindings) in an order that runs
each after the jobs it reads, and every evaluated model (`Cell`, a row of the report).

Planning reads the task registry (seqio) for the clusters a mixture spans; it runs nothing and writes nothing.
The study's folder (`output_dir`, STUDY_DIR) may be local or in a bucket: paths are joined as
flan_jax.storage joins them.
"""

import dataclasses
import shlex
from typing import Any, Mapping, Optional, Sequence

import seqio

from flan_jax import settings, storage, task_info
from flan_jax.checkpoints import paths
from flan_jax.errors import UserError

CONDITIONS = ("base", "instructions", "notemplate", "datasetname")
ACTIONS = ("run", "print", "report")


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
  if isinstance(value, str) and settings.as_gin_value(value) == repr(value):
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


def check(design: Design) -> None:
  storage.check(design.output_dir, "STUDY_DIR")  # a local folder or gs://bucket/path, s3://bucket/path
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
  runs = storage.join(design.output_dir, "runs")
  jobs, cells = [], []
  for size, model_gin in design.sizes.items():
    for seed in design.seeds:
      group = f"{size}_seed{seed}"
      if design.base_checkpoints:
        base, base_job = design.base_checkpoints[size], None
      else:
        base = storage.join(runs, group, "pretrain")
        base_job = f"{group}/pretrain"
        jobs.append(Job(base_job, "train", tuple(design.train_gin) + tuple(model_gin),
                        tuple(dict(design.pretrain, MODEL_DIR=base, **{"train.seed": seed}).items()), base))
      start = base if not base_job else storage.join(base, paths.SUBDIR, str(design.pretrain["TRAIN_STEPS"]))
      for held_out in design.held_out:
        group_cells = []
        wanted = [(c, None) for c in design.conditions] + [
            ("instructions", k) for k in design.cluster_counts]
        for condition, count in wanted:
          evals = storage.join(design.output_dir, "evals", group, held_out)
          if condition == "base":
            group_cells.append(Cell(size, seed, held_out, "base", 0, base, storage.join(evals, "base"), base_job,
                                    None))
            continue
          mixture = _mixture(design, held_out, condition, count)
          label = condition if count is None else f"clusters{count}"
          directory = storage.join(runs, group, mixture)  # one run per mixture, whichever cells read it
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
                                  storage.join(evals, label), job_id, mixture))
        eval_dir = storage.join(design.output_dir, "evals", group, held_out)
        bindings = dict(design.evaluate, CHECKPOINT_PATH=[c.checkpoint for c in group_cells],
                        EVAL_OUTPUT_DIR=[c.eval_dir for c in group_cells],
                        MIXTURE_OR_TASK_NAME=design.eval_mixture.format(held_out=held_out),
                        **{"evaluate.run_names": [c.id.replace("/", "_") for c in group_cells]})
        jobs.append(Job(f"{group}/{held_out}_eval", "eval", tuple(design.eval_gin), tuple(bindings.items()),
                        eval_dir, after=tuple(sorted({c.train_job for c in group_cells if c.train_job}))))
        cells += group_cells
  return jobs, cells


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
