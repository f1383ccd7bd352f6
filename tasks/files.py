"""User instruction tasks from local JSONL, CSV or TSV files, checked row by row on registration.

    from flan_tasks import files
    files.jsonl_task("my_qa", "data/qa.jsonl", templates=["Q: {question}\\nA:"],
                     answer_field="reply", metrics=["squad"])

registers `my_qa`, `my_qa_eval` (and `my_qa_scoring` with options). The same functions are gin
configurables (`MIXTURE_OR_TASK_NAME = @flan_tasks.files.jsonl_task()`); see docs/tasks.md.
"""

import csv
import io
import json
from typing import Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from flan_jax import storage, task_info
from flan_jax.errors import UserError
from flan_tasks import instruction
from flan_tasks import metrics as metrics_lib
from flan_tasks import templates as templates_lib
from flan_tasks.templates import ANSWER_FIELD, OPTIONS_FIELD, Template

METRICS = {"accuracy": metrics_lib.accuracy, "squad": metrics_lib.squad,
           "bleu": metrics_lib.bleu, "rouge": metrics_lib.rouge}
SPLITS = ("train", "validation", "test")

Paths = Union[str, Mapping[str, str]]
TemplateLike = Union[str, Sequence[str], Template]


class FileTaskError(UserError):
  """A task file is missing, empty, or has a row that cannot be used; says which file and row."""


def templates_of(templates: Sequence[TemplateLike]) -> list[Template]:
  """Strings are input templates with target "{answer}"; pairs are (inputs, targets), triples
  (inputs, targets, delimiter)."""
  out = []
  for t in templates:
    if isinstance(t, Template):
      out.append(t)
    elif isinstance(t, str):
      out.append(Template(t))
    elif len(t) in (2, 3):
      out.append(Template(*t))
    else:
      raise templates_lib.TemplateError(f"template {t!r}: give a prompt string, or (prompt, target) or "
                          "(prompt, target, delimiter)")
  return out


def _read_rows(path: str, kind: str) -> list[tuple[int, dict]]:
  """(line number, row dict) for every record of the file."""
  if not storage.exists(storage.check(path, "file task path")):  # a local file or an object in a bucket
    raise FileTaskError(f"{path}: file not found")
  rows = []
  with io.StringIO(storage.read_text(path), newline="") as f:
    if kind == "jsonl":
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise FileTaskError(f"{path}, row {number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
          raise FileTaskError(f"{path}, row {number}: expected a JSON object, got "
                              f"{type(row).__name__}")
        rows.append((number, row))
    else:
      reader = csv.reader(f, delimiter="," if kind == "csv" else "\t")
      try:
        header = next(reader)
      except StopIteration:
        raise FileTaskError(f"{path}: the file is empty (no header row)") from None
      for values in reader:
        number = reader.line_num
        if not any(v.strip() for v in values):
          continue
        if len(values) != len(header):
          raise FileTaskError(f"{path}, row {number}: has {len(values)} columns, the header "
                              f"has {len(header)}")
        rows.append((number, dict(zip(header, values))))
  if not rows:
    raise FileTaskError(f"{path}: the file has no rows")
  return rows


def _row_fields(path, number, row, needed, answer_field, options_field, options_separator):
  """The row as template fields (strings, `answer`, and `options` when there are options)."""
  out = {}
  for field in needed:
    source = {ANSWER_FIELD: answer_field, OPTIONS_FIELD: options_field}.get(field, field)
    if source not in row or row[source] is None:
      raise FileTaskError(f"{path}, row {number}: missing field '{source}'")
    value = row[source]
    if field == OPTIONS_FIELD:
      if isinstance(value, str):
        value = [v.strip() for v in value.split(options_separator)]
      if not isinstance(value, list) or not value:
        raise FileTaskError(f"{path}, row {number}: field '{source}' must be a non-empty list")
      value = [str(v) for v in value]
    elif isinstance(value, (dict, list)):
      raise FileTaskError(f"{path}, row {number}: field '{source}' must be a string or number")
    else:
      value = str(value)
    out[field] = value
  if OPTIONS_FIELD in out and out[ANSWER_FIELD] not in out[OPTIONS_FIELD]:
    raise FileTaskError(f"{path}, row {number}: answer {out[ANSWER_FIELD]!r} is not one of the "
                        f"options {out[OPTIONS_FIELD]}")
  return out


def _columns(records: list[dict]) -> dict:
  columns = {key: [r[key] for r in records] for key in records[0]}
  if OPTIONS_FIELD in columns:
    columns[OPTIONS_FIELD] = tf.ragged.constant(columns[OPTIONS_FIELD])
  return columns


def _dataset_fn(split, shuffle_files, seed=None, *, columns):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(columns[split])


def file_task(name: str, paths: Paths, templates: Sequence[TemplateLike], kind: str,
              answer_field: str = ANSWER_FIELD, options_field: Optional[str] = None,
              options_separator: str = "|", metrics: Sequence[str] = ("accuracy",),
              cluster: str = "user", delimiter: Optional[str] = None, stop: Sequence[str] = ()) -> str:
  """Registers an instruction task read from files; returns its name.

  `paths` is one file (used for every split) or {split: file}. Templates name the file's fields;
  `{answer}` is the `answer_field` column and `{options_}` lists the `options_field` column (a
  JSON list, or text split on `options_separator`). `delimiter` goes between prompt and target
  where a template sets none (default: a space unless the prompt ends in whitespace); `stop`
  strings cut decoded answers.
  """
  templates = templates_of(templates)
  split_paths = {s: paths for s in SPLITS} if isinstance(paths, str) else dict(paths)
  if "train" not in split_paths:
    raise FileTaskError(f"task {name}: needs a 'train' file, got splits {sorted(split_paths)}")
  needed = set().union(*(t.fields() for t in templates)) | {ANSWER_FIELD}
  if options_field:
    needed.add(OPTIONS_FIELD)
  unknown = [m for m in metrics if m not in METRICS]
  if unknown:
    raise ValueError(f"task {name}: unknown metric {unknown[0]!r}; choose from {sorted(METRICS)}")
  rows = {split: _read_rows(path, kind) for split, path in split_paths.items()}
  # Template errors name the task, template and field: check against the first file's columns.
  first_row = rows["train"][0][1]
  renamed = {answer_field: ANSWER_FIELD, options_field: OPTIONS_FIELD}
  columns_available = [renamed.get(key, key) for key in first_row]
  templates_lib.validate(f"{name} (from {split_paths['train']})", templates, columns_available)
  base = instruction.InstructionDataset(
      name=name, cluster=cluster, source=None, fields=tuple(sorted(needed)), templates=templates,
      metric_fns=tuple(METRICS[m] for m in metrics), delimiter=delimiter, stop=tuple(stop))
  instruction.check(base)
  columns, sizes = {}, {}
  for split, path in split_paths.items():
    records = [_row_fields(path, number, row, sorted(needed), answer_field, options_field,
                           options_separator) for number, row in rows[split]]
    columns[split] = _columns(records)
    sizes[split] = len(records)
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: _dataset_fn(split, shuffle_files, seed,
                                                          columns=columns),
      splits=list(split_paths), num_input_examples=sizes)
  for task in (name, task_info.eval_task(name), task_info.scoring_task(name)):
    seqio.TaskRegistry.remove(task)  # registering again (e.g. gin re-evaluating) replaces it
  instruction.register(instruction.InstructionDataset(
      name=name, cluster=cluster, source=source, fields=base.fields, templates=templates,
      metric_fns=base.metric_fns, delimiter=delimiter, stop=base.stop))
  return name


@gin.configurable(module="flan_tasks.files")
def jsonl_task(name: str, paths: Paths, templates: Sequence[TemplateLike], **kwargs) -> str:
  """A task from JSON Lines files (one JSON object a line). See `file_task`."""
  return file_task(name, paths, templates, "jsonl", **kwargs)


@gin.configurable(module="flan_tasks.files")
def csv_task(name: str, paths: Paths, templates: Sequence[TemplateLike], **kwargs) -> str:
  """A task from comma-separated files with a header row. See `file_task`."""
  return file_task(name, paths, templates, "csv", **kwargs)


@gin.configurable(module="flan_tasks.files")
def tsv_task(name: str, paths: Paths, templates: Sequence[TemplateLike], **kwargs) -> str:
  """A task from tab-separated files with a header row. See `file_task`."""
  return file_task(name, paths, templates, "tsv", **kwargs)
