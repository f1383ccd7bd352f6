"""User tasks from JSONL/CSV/TSV files: registration, examples, clear errors, and a few training
steps of the tiny model on a JSONL task bound from a gin file."""

import json
import os
import subprocess
import sys

import pytest
import seqio

import flan_tasks  # noqa: F401
from flan_tasks import files, user
from flan_tasks.templates import TemplateError
from tests import conftest
from tests.conftest import xla_flags

ROOT = conftest.ROOT
ROWS = [{"question": f"What is {i} plus {i}?", "reply": str(2 * i),
         "choices": [str(2 * i), str(2 * i + 1)]} for i in range(12)]
TEMPLATES = ["Q: {question}\n{options_}", "Answer this: {question}\n{options_}",
             ("The answer is {answer}. Write the question.", "{question}")]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _texts(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in ds.as_numpy_iterator()]


def test_jsonl_task_registers_train_eval_and_scoring(tmp_path):
  path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
  name = files.jsonl_task("user_test_jsonl", path, TEMPLATES, answer_field="reply",
                          options_field="choices")
  train = _texts(name)
  assert len(train) == len(ROWS) and all(i and t for i, t in train)
  evals = _texts(f"{name}_eval", "test")
  assert all(i.endswith(f"OPTIONS:\n- {t}\n- {int(t) + 1}") for i, t in evals)
  assert len(_texts(f"{name}_scoring", "test")) == 2 * len(ROWS)


@pytest.mark.parametrize("kind,sep", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_tasks(tmp_path, kind, sep):
  path = tmp_path / f"qa.{kind}"
  path.write_text(sep.join(["question", "reply", "choices"]) + "\n" + "".join(
      sep.join([r["question"], r["reply"], "|".join(r["choices"])]) + "\n" for r in ROWS))
  register = files.csv_task if kind == "csv" else files.tsv_task
  name = register(f"user_test_{kind}", str(path), TEMPLATES[:1], answer_field="reply",
                  options_field="choices")
  assert len(_texts(f"{name}_scoring", "test")) == 2 * len(ROWS)


def test_separate_split_files(tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", ROWS[:8])
  test = _write_jsonl(tmp_path / "test.jsonl", ROWS[8:])
  name = files.jsonl_task("user_test_splits", {"train": train, "test": test}, ["{question}"],
                          answer_field="reply", metrics=["accuracy", "squad"])
  assert len(_texts(name)) == 8 and len(_texts(f"{name}_eval", "test")) == 4


@pytest.mark.parametrize("content,message", [
    ("", r"empty\.jsonl: the file has no rows"),
    ('{"question": "q", "reply": "a"}\n{"question": "q2"}\n',
     r"empty\.jsonl, row 2: missing field 'reply'"),
    ('{"question": "q", "reply": "a"}\n{not json\n', r"empty\.jsonl, row 2: not valid JSON"),
    ('["a list"]\n', r"row 1: expected a JSON object"),
])
def test_bad_jsonl_files_name_file_and_row(tmp_path, content, message):
  path = tmp_path / "empty.jsonl"
  path.write_text(content)
  with pytest.raises(files.FileTaskError, match=message):
    files.jsonl_task("user_test_bad", str(path), ["{question}"], answer_field="reply")


def test_bad_csv_rows_and_missing_file(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("question,reply\nok,yes\ntoo,many,columns\n")
  with pytest.raises(files.FileTaskError, match=r"bad\.csv, row 3: has 3 columns"):
    files.csv_task("user_test_bad_csv", str(path), ["{question}"], answer_field="reply")
  path.write_text("")
  with pytest.raises(files.FileTaskError, match=r"bad\.csv: the file is empty"):
    files.csv_task("user_test_bad_csv", str(path), ["{question}"], answer_field="reply")
  with pytest.raises(files.FileTaskError, match="file not found"):
    files.csv_task("user_test_bad_csv", str(tmp_path / "nope.csv"), ["{q}"])


def test_answer_must_be_an_option(tmp_path):
  path = _write_jsonl(tmp_path / "qa.jsonl", [dict(ROWS[0], reply="7")])
  with pytest.raises(files.FileTaskError, match=r"row 1: answer '7' is not one of the options"):
    files.jsonl_task("user_test_opt", path, TEMPLATES[:1], answer_field="reply",
                     options_field="choices")


def test_template_with_unknown_field_names_task_template_field(tmp_path):
  path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
  with pytest.raises(TemplateError, match=r"user_test_tpl.*template 1 .*'context'"):
    files.jsonl_task("user_test_tpl", path, ["{question}", "{context} {question}"],
                     answer_field="reply")


def test_user_mixture_and_tfds_task_registration(tmp_path):
  path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
  files.jsonl_task("user_test_mix_a", path, ["{question}"], answer_field="reply")
  mix = user.mixture("user_test_mix", ["user_test_mix_a", "embedded_addition"])
  mixture = seqio.get_mixture_or_task(mix)
  assert mixture.get_rate(seqio.get_mixture_or_task("user_test_mix_a")) == len(ROWS)
  name = user.tfds_task("user_test_rte", "super_glue/rte:1.0.2",
                        ["{premise}\nDoes it follow that {hypothesis}?\n{options_}"],
                        fields={"premise": "premise", "hypothesis": "hypothesis"},
                        answer="label", options=["yes", "no"])
  assert f"{name}_scoring" in seqio.TaskRegistry.names()


def test_jsonl_task_trains_tiny_model_from_gin(tmp_path):
  data = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
  gin_file = tmp_path / "user_task.gin"
  gin_file.write_text(f"""
import flan_tasks.files
MIXTURE_OR_TASK_NAME = @flan_tasks.files.jsonl_task()
flan_tasks.files.jsonl_task.name = 'user_gin_qa'
flan_tasks.files.jsonl_task.paths = '{data}'
flan_tasks.files.jsonl_task.templates = ['Q: {{question}}', 'Answer: {{question}}']
flan_tasks.files.jsonl_task.answer_field = 'reply'
""")
  model_dir = tmp_path / "model"
  cmd = [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/runs/finetune.gin",
         "--gin_file=gin/models/tiny.gin", f"--gin_file={gin_file}",
         f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=4",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": xla_flags()}
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert any(model_dir.iterdir())


def test_a_task_file_in_a_bucket_gives_the_examples_of_the_same_file_on_disk(tmp_path, gcs_dir):
  from flan_jax import storage
  local = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
  remote = storage.join(gcs_dir, "qa.jsonl")
  storage.write_bytes(remote, open(local, "rb").read())
  names = [files.jsonl_task(f"user_test_{where}", path, TEMPLATES, answer_field="reply", options_field="choices")
           for where, path in (("disk", local), ("bucket", remote))]
  assert _texts(names[0]) == _texts(names[1]) and len(_texts(names[1])) == len(ROWS)
  with pytest.raises(files.FileTaskError, match="file not found"):
    files.jsonl_task("user_test_bucket_missing", storage.join(gcs_dir, "nothing.jsonl"), TEMPLATES)
