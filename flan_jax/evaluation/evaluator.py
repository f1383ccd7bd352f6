"""Zero-shot evaluation: restore checkpoints, run seqio.Evaluator, write metrics and per-example records.

Rank-classification tasks get each option's log-likelihood (and every normalisation of it);
decoding tasks get greedy decodes, both run by batches.BatchRunner in length buckets. This module restores
checkpoints on its own and never imports the trainer.
"""

import dataclasses
import functools
import time
from typing import Any, Mapping, Optional, Sequence, Union

import gin
import jax
import numpy as np
import seqio

from flan_jax import files, settings, storage, task_info
from flan_jax import metrics as metrics_lib
from flan_jax.checkpoints import paths, restore, run_record
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
from flan_jax.evaluation import predictions as predictions_lib
from flan_jax.evaluation.batches import BatchRunner, prompt_lengths
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import ModelConfig, Transformer
from flan_jax.text import formats, tokenizers, vocabulary
from flan_jax.text.run import RunText, run_text


@gin.configurable
def evaluate(checkpoint_path: Union[str, Sequence[str], None] = None, *,
             mixture_or_task_name: Optional[str] = None,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             model_config: Optional[ModelConfig] = None,
             split: Union[str, Sequence[str]] = "validation",
             batch_size: int = 32,
             num_examples: Optional[int] = None,
             output_dir: Union[str, Sequence[str], None] = None,
             normalization: str = "none",
             all_steps: bool = False,
             follow_seconds: float = 0.0,
             run_names: Optional[Sequence[str]] = None,
             mesh: Optional[jax.sharding.Mesh] = None,
             rules: Optional[tuple] = None) -> list[dict]:
  """Evaluates checkpoints zero-shot on every task of a task or mixture; returns their reports.

  `checkpoint_path` is one path or a list of them (several runs, e.g. base, tuned, ablation);
  each is a flan_jax run (its newest step, or with `all_steps` every step not yet evaluated), one
  step of a run, a Hugging Face model directory or a GGUF file. With `follow_seconds`, a run is
  watched for new checkpoints (each once whole, in a bucket too) until none has appeared for that long.
  Each (step, split) writes `eval_<name>_<split>_step<step>.json` (metrics) and
  `predictions_<name>_<split>_step<step>.jsonl` (every example, for `python -m flan_jax.report`), each
  whole, into `output_dir` (default: the run's MODEL_DIR; a list gives one directory per checkpoint path;
  local or in a bucket). The model config and the vocabulary follow the checkpoint unless the gin config
  sets them (then they must match it).
  """
  paths = [checkpoint_path] if isinstance(checkpoint_path, str) else list(checkpoint_path or [])
  if not paths:
    raise UserError("CHECKPOINT_PATH is not set: pass --gin.CHECKPOINT_PATH=<model dir> or <model dir>/<step>")
  if normalization not in predictions_lib.NORMALIZATIONS:
    raise UserError(f"evaluate.normalization={normalization!r}; choose one of "
                    f"{', '.join(predictions_lib.NORMALIZATIONS)}")
  data_lib.check_task_name(mixture_or_task_name)
  data_lib.use_tfds_data_dir()  # TFDS_DATA_DIR, as gin binds it
  _check_settings(task_feature_lengths, batch_size, num_examples, all_steps, follow_seconds, split)
  splits = [split] if isinstance(split, str) else list(split)
  names = list(run_names) if run_names else [_run_name(p) for p in paths]
  if len(names) != len(paths) or len(set(names)) != len(names):
    raise UserError(f"run names {names} must be distinct, one per checkpoint path")
  output_dirs = [output_dir] * len(paths) if output_dir is None or isinstance(output_dir, str) else list(output_dir)
  if len(output_dirs) != len(paths):
    raise UserError(f"EVAL_OUTPUT_DIR lists {len(output_dirs)} directories for {len(paths)} checkpoint paths; "
                    "give one directory, or one per path")
  for path, directory in zip(paths, output_dirs):
    storage.check(path, "CHECKPOINT_PATH")
    if directory:
      storage.check(directory, "EVAL_OUTPUT_DIR")
  mesh = partitioning.make_mesh() if mesh is None else mesh
  rules = partitioning.axis_rules() if rules is None else rules
  if batch_size % partitioning.data_parallel_size(mesh, rules):
    raise UserError(f"eval batch_size={batch_size} must divide by the data-parallel size "
                    f"{partitioning.data_parallel_size(mesh, rules)}")
  reports = []
  with run_text() as followed:  # where gin chooses none: the vocabulary and format the checkpoints recorded
    job = _Job(mixture_or_task_name, dict(task_feature_lengths), splits, batch_size, num_examples,
               normalization, mesh, rules, followed, vocabulary_chosen=vocabulary.is_chosen())
    for name, path, directory in zip(names, paths, output_dirs):
      reports += _evaluate_run(job, name, path, model_config, directory, all_steps, follow_seconds)
  return reports


def _check_settings(task_feature_lengths, batch_size, num_examples, all_steps, follow_seconds, split) -> None:
  """Refuses a wrong type or value of a numeric setting of `evaluate` in one line, before anything compiles."""
  settings.feature_lengths("TASK_FEATURE_LENGTHS", task_feature_lengths)
  settings.integer("EVAL_BATCH_SIZE", batch_size)
  settings.integer("evaluate.num_examples", num_examples, allow_none=True)
  settings.boolean("evaluate.all_steps", all_steps)
  settings.number("evaluate.follow_seconds", follow_seconds, low=0)
  names = [split] if isinstance(split, str) else split
  if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) and n for n in names)):
    raise UserError(f"EVAL_SPLITS={split!r} must be a split name or a non-empty list of them; "
                    "pass --gin.EVAL_SPLITS=\"['validation']\"")


@dataclasses.dataclass
class _Job:
  """What stays fixed across the checkpoints of one eval command; seqio evaluators are built once."""
  name: str
  lengths: dict
  splits: list
  batch_size: int
  num_examples: Optional[int]
  normalization: str
  mesh: Any
  rules: tuple
  followed: RunText  # evaluate()'s run_text: _follow_vocabulary and _follow_format fill it from a checkpoint
  evaluators: dict = dataclasses.field(default_factory=dict)
  vocab_record: Optional[dict] = None
  format_record: Optional[dict] = None
  vocabulary_chosen: bool = False  # in gin or by the caller's run_text: then weights without a tokenizer are used

  def evaluator(self, split: str) -> seqio.Evaluator:
    if split not in self.evaluators:
      vocab = data_lib.vocabulary(self.name)
      self.evaluators[split] = seqio.Evaluator(
          self.name, feature_converter=data_lib.feature_converter(pack=False, vocab=vocab),
          eval_split=split, sequence_length=self.lengths, num_examples=self.num_examples,
          use_cached=False, async_compute_metrics=False)
      if not self.evaluators[split].eval_tasks:
        raise UserError(f"no task of '{self.name}' has a '{split}' split; set evaluate.split to one "
                        "the tasks have (see `python -m flan_tasks`)")
    return self.evaluators[split]


def _run_name(path: str) -> str:
  return storage.basename(paths.model_dir_of(path)) or path


def _evaluate_run(job: _Job, run: str, path: str, model_config: Optional[ModelConfig],
                  output_dir: Optional[str], all_steps: bool, follow_seconds: float) -> list[dict]:
  is_pretrained = paths.is_pretrained(path)
  if is_pretrained and not output_dir:
    raise UserError(f"{path} is a pretrained model: set EVAL_OUTPUT_DIR for the eval results")
  if not is_pretrained and not storage.isdir(path):
    raise UserError(f"checkpoint path {path} does not exist; pass CHECKPOINT_PATH=<model dir> "
                    f"or <model dir>/{paths.SUBDIR}/<step>")
  model_dir = paths.model_dir_of(path)
  output_dir = output_dir or model_dir
  if model_config is None:
    model_config = (restore.pretrained_model_config(path) if is_pretrained
                    else run_record.recorded_model_config(model_dir) or ModelConfig())
  _follow_vocabulary(job, path)
  _follow_format(job, path)
  model = Transformer(model_config)
  target = partitioning.sharded_param_structs(model, job.mesh, job.rules)
  vocab = data_lib.vocabulary(job.name)
  stop_ids = formats.stop_ids(vocab, job.format_record["format"])
  # Batches are cut to length buckets (batches.py): decodes at their longest prompt, scores at their last token.
  runners = (BatchRunner(functools.partial(
      decoding.decoder(), model, max_decode_length=job.lengths["targets"], eos_id=stop_ids,
      vocab_size=vocab.vocab_size), job.mesh, job.rules, job.batch_size, reads=prompt_lengths),
             BatchRunner(functools.partial(decoding.score_targets, model), job.mesh, job.rules, job.batch_size,
                         sort=True))
  reports, done = [], set()
  waited_since = time.time()
  every = all_steps or follow_seconds > 0  # then steps with results already written are skipped
  while True:
    pending = [s for s in _steps(path, is_pretrained, every) if s not in done]
    pending = [s for s in pending if not (every and _evaluated(output_dir, job, s))]
    for step in pending:
      where = path if is_pretrained or step is None else storage.join(model_dir, paths.SUBDIR, str(step))
      loaded_step, params = restore.restore_params(where, model_config, job.mesh, job.rules, target)
      for runner in runners:
        runner.params = params
      reports += [_evaluate_step(job, run, path, runners, loaded_step, split, output_dir)
                  for split in job.splits]
      done.add(step)
      waited_since = time.time()
    left = follow_seconds - (time.time() - waited_since)
    if left <= 0:
      return reports
    time.sleep(min(POLL_SECONDS, follow_seconds / 4, left))


POLL_SECONDS = 10.0  # how often a followed run is looked at, at most (a short follow_seconds looks more often)
def _steps(path: str, is_pretrained: bool, every: bool) -> list:
  """The steps to evaluate: None for a pretrained model or a single step dir (restored as named).

  Of a run, its whole checkpoints only: one still being written (into a bucket, by a training run this
  eval follows) is left for a later look. The listing is read afresh each time (flan_jax.storage caches
  no bucket listing), so steps saved since the last look are seen.
  """
  if is_pretrained or storage.basename(storage.absolute(path)).isdigit() or not every:
    return [None]
  directory = storage.join(paths.model_dir_of(path), paths.SUBDIR)
  if not storage.isdir(directory):
    return [None]  # restore_params explains what is missing
  steps = sorted(int(d) for d in storage.listdir(directory) if d.isdigit())
  return [s for s in steps if paths.is_complete_step(storage.join(directory, str(s)))]


def _evaluated(output_dir: str, job: _Job, step) -> bool:
  return step is not None and all(storage.exists(_result_path(output_dir, job.name, split, step, "eval"))
                                  for split in job.splits)


def _result_path(output_dir: str, name: str, split: str, step: int, kind: str) -> str:
  suffix = "json" if kind == "eval" else "jsonl"
  return storage.join(output_dir, f"{kind}_{name}_{split}_step{step}.{suffix}")


def _evaluate_step(job: _Job, run: str, path: str, runners: tuple, step: int, split: str,
                   output_dir: str) -> dict:
  """Scores and decodes every task of the mixture on one split; writes metrics and predictions."""
  evaluator = job.evaluator(split)
  vocab = data_lib.vocabulary(job.name)
  runs = {t.name: len({m.model_output_type for m in t.metric_objs}) for t in evaluator.eval_tasks}
  total = sum(_count(evaluator.cached_model_datasets[name]) * n for name, n in runs.items())
  predict, score = runners
  predict.progress = score.progress = _Progress(total, sum(runs.values()),
                                                f"{job.name} ({split}) @ step {step}")
  future, outputs = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict, score_fn=score)
  metrics = {task: {name: float(_value(v)) for name, v in values.items()}
             for task, values in future.result().items()}
  records = []
  for task in evaluator.eval_tasks:
    info = task_info.lookup(task.name)
    lineage = predictions_lib.Lineage(run, storage.absolute(path), step, split, task.name, info.dataset,
                                      info.cluster, info.template)
    examples = list(evaluator.cached_task_datasets[task.name].as_numpy_iterator())
    out = outputs[task.name]
    if seqio.metrics.ModelOutputType.SCORE in out:
      content_free = _content_free(score, examples, vocab, job.lengths, job.format_record["format"])
      task_records = predictions_lib.scoring_records(
          examples, out[seqio.metrics.ModelOutputType.SCORE], content_free, lineage, job.normalization)
      metrics[task.name]["accuracy"] = predictions_lib.accuracy(task_records)
    else:
      task_records = predictions_lib.generative_records(
          examples, _postprocessed(task, vocab, out[seqio.metrics.ModelOutputType.PREDICTION], examples),
          _targets(task, examples), lineage)
    records += task_records
  report = {"checkpoint_path": storage.absolute(path), "run": run, "step": step,
            "mixture_or_task_name": job.name, "split": split, "normalization": job.normalization,
            "example_format": job.format_record["format"],
            "metrics": metrics, "average": average(metrics)}
  if jax.process_index() == 0:
    # The metrics file is written last: its presence says the step is evaluated (`_evaluated`), and
    # each file is renamed into place only when whole, so a write cut short leaves no result behind.
    storage.makedirs(output_dir)
    result = _result_path(output_dir, job.name, split, step, "eval")
    predictions_lib.write_jsonl(records, _result_path(output_dir, job.name, split, step, "predictions"))
    with metrics_lib.MetricsWriter(output_dir, enabled=True, name="eval") as writer:  # TensorBoard too
      scalars = {f"{task}/{name}": v for task, values in metrics.items() for name, v in values.items()}
      scalars.update({f"average/{name}": v for name, v in report["average"].items()})
      writer.write_scalars(step, scalars, prefix=f"{job.name}/{split}")
    files.write_json(result, report)
    print(format_table(report), flush=True)
    print(f"wrote {result} and its predictions", flush=True)
  return report


def _count(ds) -> int:
  n = int(ds.cardinality())
  return n if n >= 0 else sum(1 for _ in ds)


def answer_text(task_name: str, text: str, delimiter: str) -> str:
  """A decoded continuation as an answer: cut at the task's stop strings, without the delimiter the
  prompt format puts before a target, and without surrounding whitespace."""
  text = formats.cut_at_stop(task_name, text)
  return (text[len(delimiter):] if delimiter and text.startswith(delimiter) else text).strip()


def _postprocessed(task: seqio.Task, vocab, tokens, examples) -> list:
  """Decoded predictions after the task's postprocessor, as seqio's metrics see them."""
  texts = [vocab.decode([int(t) for t in row]) for row in tokens]
  if formats.example_format() != "t5":
    texts = [answer_text(task.name, text, predictions_lib.text(ex.get(formats.DELIMITER, b"")))
             for text, ex in zip(texts, examples)]
  if not task.postprocess_fn:
    return texts
  return [task.postprocess_fn(text, example=ex, is_target=False) for text, ex in zip(texts, examples)]


def _targets(task: seqio.Task, examples) -> list:
  """Each example's target text after the task's postprocessor."""
  texts = [predictions_lib.text(ex["targets_pretokenized"]) for ex in examples]
  if not task.postprocess_fn:
    return texts
  return [task.postprocess_fn(text, example=ex, is_target=True) for text, ex in zip(texts, examples)]


def _content_free(score: BatchRunner, examples, vocab, lengths: Mapping[str, int],
                  example_format: str) -> dict[str, float]:
  """Each distinct option's log-likelihood after an empty prompt (the start token only): the
  calibration term."""
  options = {}
  for row in examples:
    options.setdefault(predictions_lib.text(row["targets_pretokenized"]), row["targets"])
  length = lengths["inputs"] + lengths["targets"]
  bos = formats.decoder_start(vocab, example_format)
  bos = formats.empty_prompt_start(vocab) if bos is None else bos
  rows = {k: np.zeros((len(options), length), np.int32) for k in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention")}
  for i, ids in enumerate(options.values()):
    ids = np.asarray(ids[:length], np.int32)
    rows["decoder_input_tokens"][i, :len(ids)] = np.concatenate([[bos], ids[:-1]])
    rows["decoder_target_tokens"][i, :len(ids)] = ids
    rows["decoder_loss_weights"][i, :len(ids)] = 1
    rows["decoder_causal_attention"][i, 0] = 1
  return dict(zip(options, score.run_rows(rows)))


class _Progress:
  """Prints the task being run (k/n), examples done, examples/s and an ETA for one split of one checkpoint.

  A task counts once per kind of model output its metrics need (scores, predictions), as
  seqio.Evaluator runs the model once for each.
  """

  def __init__(self, total: int, tasks: int, title: str):
    self.total, self.tasks, self.title = max(total, 1), tasks, title
    self.done, self.task, self.started, self.last_print = 0, 0, time.time(), 0.0

  def add(self, n: int) -> None:
    self.done += n
    self._print(force=self.done >= self.total)

  def start_task(self) -> None:
    self.task += 1

  def _print(self, force: bool) -> None:
    now = time.time()
    if jax.process_index() == 0 and (now - self.last_print > 10 or force):
      self.last_print = now
      rate = self.done / max(now - self.started, 1e-9)
      eta = (self.total - self.done) / rate if rate else 0.0
      print(f"eval {self.title}: task {self.task}/{self.tasks}, {self.done}/{self.total} examples, "
            f"{rate:.1f} examples/s, ETA {int(eta) // 60}m{int(eta) % 60:02d}s", flush=True)


def _follow_vocabulary(job: _Job, checkpoint_path: str) -> None:
  """Tokenize with the checkpoint's vocabulary; one chosen in gin, or used by an earlier run of
  this command (its tasks are already tokenized), must be the same one. A pretrained model without a
  tokenizer is refused (one line) unless the vocabulary is chosen in gin or by the caller's run_text."""
  start = restore.starting_vocabulary(checkpoint_path, missing_ok=job.vocabulary_chosen)
  if start is None:
    return
  if not vocabulary.is_configured() and job.vocab_record is None:
    job.followed.vocabulary = start
  tokenizers.check_same(tokenizers.describe(start), data_lib.vocabulary(job.name), checkpoint_path)
  job.vocab_record = tokenizers.describe(start)


def _follow_format(job: _Job, checkpoint_path: str) -> None:
  """Format examples as the checkpoint's run did (a pretrained model: as gin says, else 'prompt');
  one chosen in gin, or used by an earlier run of this command, must be the same one."""
  vocab = data_lib.vocabulary(job.name)
  recorded = restore.starting_format(checkpoint_path)
  if recorded is not None and not formats.is_configured() and job.format_record is None:
    job.followed.example_format = recorded["format"]
  current = formats.describe(formats.example_format(), vocab)
  for earlier, where in ((recorded, checkpoint_path), (job.format_record, "an earlier checkpoint of this eval")):
    if earlier is not None:
      formats.check_same(earlier, current, where)
  job.format_record = current


def _value(v) -> float:
  return getattr(v, "value", v)


def average(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """The mean of each metric over the tasks that report it."""
  names = sorted({name for values in metrics.values() for name in values})
  return {name: float(np.mean([v[name] for v in metrics.values() if name in v])) for name in names}


def format_table(report: Mapping[str, Any]) -> str:
  rows = [(task, name, value) for task, values in sorted(report["metrics"].items())
          for name, value in sorted(values.items())]
  rows += [("average", name, value) for name, value in report["average"].items()]
  width = max([len(r[0]) for r in rows] + [4])
  mwidth = max([len(r[1]) for r in rows] + [6])
  lines = [f"{report['mixture_or_task_name']} @ step {report['step']} ({report['split']})",
           f"{'task':<{width}}  {'metric':<{mwidth}}  value", f"{'-' * width}  {'-' * mwidth}  -------"]
  lines += [f"{t:<{width}}  {m:<{mwidth}}  {v:7.2f}" for t, m, v in rows]
  return "\n".join(lines)
