"""The study runner end to end on the tiny model: plan, contamination check, resumable jobs, report."""

import glob
import json
import os
import shutil

import gin
import pytest
import seqio

from flan_jax import cli, studies
from flan_jax.errors import UserError
from flan_jax.text import vocabulary

# Two conditions x two seeds x one held-out cluster, small enough to run in a minute or two.
MICRO = """
include 'studies/miniature.gin'
study.sizes = {'tiny': ['models/tiny.gin']}
study.seeds = [0, 1]
study.conditions = ['base', 'instructions']
study.cluster_counts = []
study.pretrain = {'MIXTURE_OR_TASK_NAME': 'embedded_pretrain', 'TASK_FEATURE_LENGTHS': %LENGTHS,
                  'TRAIN_STEPS': 8, 'BATCH_SIZE': 8, 'CHECKPOINT_PERIOD': 8, 'LEARNING_RATE': 3e-3}
study.tune = {'TASK_FEATURE_LENGTHS': %LENGTHS, 'TRAIN_STEPS': 6, 'BATCH_SIZE': 8, 'CHECKPOINT_PERIOD': 3}
study.evaluate = {'TASK_FEATURE_LENGTHS': %LENGTHS, 'EVAL_SPLITS': ['validation', 'test'],
                  'evaluate.num_examples': 4, 'EVAL_BATCH_SIZE': 8}
"""


def run_study(gin_file, *bindings):
  cli.configure_gin(cli.Flags(gin_files=[gin_file], gin_bindings=list(bindings)))
  try:
    return studies.study()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
  directory = tmp_path_factory.mktemp("study")
  gin_file = directory / "micro.gin"
  gin_file.write_text(MICRO)
  out = directory / "out"
  report = run_study(str(gin_file), f"STUDY_DIR = '{out}'")
  return str(gin_file), str(out), report


def test_report_holds_the_numbers_of_the_eval_files(micro):
  _, out, report = micro
  cells = report["cells"]
  assert len(cells) == 4  # (base, instructions) x seeds 0, 1
  assert {c["condition"] for c in cells.values()} == {"base", "instructions"}
  for cell in cells.values():
    for dataset, entry in cell["datasets"].items():
      # The eval binary's own metrics for the template the report chose on validation, on test.
      metrics_file, = glob.glob(os.path.join(cell["eval_dir"], "eval_*_test_step*.json"))
      with open(metrics_file) as f:
        metrics = json.load(f)["metrics"]
      task = f"{dataset}_scoring_t{entry['best_template']}"
      assert entry["best"]["accuracy"] == pytest.approx(metrics[task]["accuracy"])
  group = next(g for g in report["groups"] if g["condition"] == "instructions")
  per_seed = [cells[s["cell"]]["best"]["accuracy"] for s in group["per_seed"]]
  assert group["best"]["accuracy"] == pytest.approx(sum(per_seed) / 2)
  for name in ("report.json", "report.md", "conditions.png"):
    assert os.path.exists(os.path.join(out, "report", name)), name


def test_each_tuned_run_records_what_it_trained_on(micro):
  _, out, _ = micro
  with open(os.path.join(out, "study.json")) as f:
    manifest = json.load(f)
  tuned = [c for c in manifest["cells"] if c["condition"] == "instructions"]
  assert len(tuned) == 2
  for cell in tuned:
    assert cell["trained_on"]["step"] == 6
    assert set(cell["trained_on"]["tasks"]) == {
        "embedded_" + d for d in ("color_nli", "place_nli", "count_nli", "addition", "comparison", "parity",
                                  "reverse_word", "uppercase", "first_letter", "headline_topic",
                                  "animal_habitat", "product_category")}
  contamination = json.load(open(os.path.join(out, "contamination.json")))
  assert contamination["embedded_no_sentiment vs sentiment"]["clean"]


def test_an_interrupted_study_skips_finished_jobs_and_gives_the_same_report(micro, capsys):
  gin_file, out, report = micro
  # Seed 1's tuning run lost its last checkpoint (and its eval never finished), as after a kill.
  tuned = os.path.join(out, "runs", "tiny_seed1", "embedded_no_sentiment")
  os.remove(os.path.join(tuned, studies.DONE))
  shutil.rmtree(os.path.join(tuned, "checkpoints", "6"))
  evals = os.path.join(out, "evals", "tiny_seed1", "sentiment")
  os.remove(os.path.join(evals, studies.DONE))
  for path in glob.glob(os.path.join(evals, "*", "*_step*.json*")):
    os.remove(path)
  capsys.readouterr()
  run_study(gin_file, f"STUDY_DIR = '{out}'")
  stdout = capsys.readouterr().out
  skipped = [line for line in stdout.splitlines() if "done before, skipped" in line]
  assert len(skipped) == 4  # both pretraining runs, seed 0's tuning run and its eval
  assert "resumed from step 3" in stdout
  with open(os.path.join(out, "report", "report.json")) as f:
    again = json.load(f)
  assert again["groups"] == report["groups"]
  assert again["differences"] == report["differences"]


def test_print_lists_every_job_as_a_binary_command(micro, capsys):
  gin_file, out, _ = micro
  run_study(gin_file, f"STUDY_DIR = '{out}'", "study.action = 'print'")
  lines = capsys.readouterr().out.splitlines()
  commands = [line for line in lines if line.startswith("python -m")]
  assert len(commands) == 6  # 2 x (pretraining, tuning, eval)
  assert sum("flan_jax.eval" in c for c in commands) == 2
  assert all("[done]" in line for line in lines if line.startswith("# ") and "training jobs" not in line)
  assert lines[-1] == "# 4 training jobs: 28 steps, 35,840 tokens (steps x batch x sequence length); 2 eval jobs"


def test_a_design_that_trains_on_the_held_out_cluster_is_refused(micro, tmp_path):
  gin_file, _, _ = micro
  with pytest.raises(UserError, match="embedded_movie_review"):
    run_study(gin_file, f"STUDY_DIR = '{tmp_path}'", "study.tuning_mixture = 'embedded_all'")
  assert not os.path.exists(os.path.join(tmp_path, "runs"))  # refused before anything trained


def test_a_job_finished_with_other_settings_is_refused(micro):
  gin_file, out, _ = micro
  with pytest.raises(UserError, match="finished with other settings"):
    run_study(gin_file, f"STUDY_DIR = '{out}'", "study.seeds = [0]",
              "study.tune = {'TASK_FEATURE_LENGTHS': %LENGTHS, 'TRAIN_STEPS': 7, 'BATCH_SIZE': 8}")


def test_bad_designs_are_one_line(tmp_path):
  with pytest.raises(UserError, match="study.conditions"):
    studies.check(studies.Design("x", str(tmp_path), {"tiny": []}, [0], ["sentiment"], ["tuned"], [], None,
                             {"TRAIN_STEPS": 1}, {}, {}, [], [], "", "", "", "", 13, 0.01))
  with pytest.raises(UserError, match="study.pretrain"):
    studies.check(studies.Design("x", str(tmp_path), {"tiny": []}, [0], ["sentiment"], ["base"], [], None,
                             {}, {}, {}, [], [], "", "", "", "", 13, 0.01))


def test_a_study_from_a_hugging_face_checkpoint(micro, tmp_path):
  """The at-scale path in miniature: no pretraining phase, tuning and eval from a model on disk."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from tests import tiny_pretrained
  model = str(tmp_path / "hf_llama")
  tiny_pretrained.build("llama", model)
  gin_file = tmp_path / "hf.gin"
  gin_file.write_text(MICRO + f"""
study.sizes = {{'hf': []}}
study.seeds = [0]
study.base_checkpoints = {{'hf': '{model}'}}
study.train_gin = ['runs/finetune_hf.gin']
study.tune = {{'TASK_FEATURE_LENGTHS': %LENGTHS, 'TRAIN_STEPS': 2, 'BATCH_SIZE': 8, 'CHECKPOINT_PERIOD': 2}}
""")
  os.makedirs(tmp_path / "out")  # the same tuning mixture and held-out cluster: its contamination check is done
  shutil.copy(os.path.join(micro[1], "contamination.json"), tmp_path / "out")
  report = run_study(str(gin_file), f"STUDY_DIR = '{tmp_path / 'out'}'")
  assert {c["condition"] for c in report["cells"].values()} == {"base", "instructions"}
  assert isinstance(vocabulary.run_vocabulary(), seqio.ByteVocabulary)  # the tokenizer ended with its jobs
  assert not os.path.exists(tmp_path / "out" / "runs" / "hf_seed0" / "pretrain")
  with open(tmp_path / "out" / "runs" / "hf_seed0" / "embedded_no_sentiment" / "model_config.json") as f:
    tuned = json.load(f)
  with open(os.path.join(model, "config.json")) as f:
    assert tuned["vocab_size"] == json.load(f)["vocab_size"]  # the checkpoint's shape and tokenizer
