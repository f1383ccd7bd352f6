"""Tests for flan_jax/evaluation/ (evaluator.py, predictions.py): scores, normalisations, batch-size invariance,
rank classification after training, several steps and runs, and bad input."""

import json
import os
import random

import jax
import numpy as np
import optax
import pytest

from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.evaluation import predictions
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer
from flan_jax.training import trainer
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from flan_tasks import files
from tests.conftest import TINY

COLORS = ["red", "blue", "green", "yellow"]
LENGTHS = {"inputs": 48, "targets": 8}


def _rows(n, seed):
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    color, thing = rng.choice(COLORS), rng.choice(["car", "door", "ball", "cup", "hat"])
    rows.append({"text": f"The {thing} is {color}.", "color": color, "choices": COLORS})
  return rows


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """A tiny model trained on a toy task whose answer is in the prompt; its run directory."""
  base = tmp_path_factory.mktemp("toy")
  paths = {}
  for split, n, seed in (("train", 256, 0), ("validation", 24, 1), ("test", 24, 2)):
    path = base / f"{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
    paths[split] = str(path)
  files.jsonl_task("toy_colors", paths, ["{text} Which color?\n{options_}", "Color of: {text}\n{options_}"],
                   answer_field="color", options_field="choices", cluster="toy")
  model_dir = str(base / "run")
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  trainer.train(model_dir, mixture_or_task_name="toy_colors", task_feature_lengths=LENGTHS, train_steps=120,
                batch_size=16, model_config=TINY, mesh=mesh, checkpoint_period=60, log_every=60,
                learning_rate_schedule=optax.constant_schedule(3e-3), optimizer=optax.adamw(3e-3))
  return model_dir, mesh


def _evaluate(model_dir, mesh, **kwargs):
  kwargs = {"mixture_or_task_name": "toy_colors_scoring", "task_feature_lengths": LENGTHS, "mesh": mesh,
            "batch_size": 8, **kwargs}
  return evaluation.evaluate(model_dir, **kwargs)


def _records(path):
  return [json.loads(line) for line in open(path)]


def test_rank_classification_picks_the_right_options_after_training(toy):
  model_dir, mesh = toy
  (report,) = _evaluate(model_dir, mesh)
  assert report["metrics"]["toy_colors_scoring"]["accuracy"] >= 90.0
  records = _records(os.path.join(model_dir, "predictions_toy_colors_scoring_validation_step120.jsonl"))
  assert len(records) == 24 and all(r["options"] == COLORS for r in records)
  assert {r["dataset"] for r in records} == {"toy_colors"} and {r["cluster"] for r in records} == {"toy"}
  # The same numbers by step, as JSONL and as TensorBoard events.
  logged = [json.loads(line) for line in open(os.path.join(model_dir, "eval_metrics.jsonl"))]
  key = "toy_colors_scoring/validation/toy_colors_scoring/accuracy"
  assert logged[-1]["step"] == 120 and logged[-1][key] == report["metrics"]["toy_colors_scoring"]["accuracy"]
  assert os.listdir(os.path.join(model_dir, "tensorboard", "eval"))


def test_scores_do_not_depend_on_the_batch_size(toy, tmp_path):
  model_dir, mesh = toy
  _evaluate(model_dir, mesh, batch_size=8, output_dir=str(tmp_path / "b8"), split="test")
  _evaluate(model_dir, mesh, batch_size=2, output_dir=str(tmp_path / "b2"), split="test")
  name = "predictions_toy_colors_scoring_test_step120.jsonl"
  a, b = _records(tmp_path / "b8" / name), _records(tmp_path / "b2" / name)
  assert a and [r["example_id"] for r in a] == [r["example_id"] for r in b]
  for x, y in zip(a, b, strict=True):
    for norm in predictions.NORMALIZATIONS:
      np.testing.assert_allclose(x["scores"][norm], y["scores"][norm], rtol=1e-5, atol=1e-5)


def test_every_step_once_then_skipped(toy, tmp_path):
  model_dir, mesh = toy
  out = str(tmp_path / "steps")
  reports = _evaluate(model_dir, mesh, all_steps=True, output_dir=out)
  assert [r["step"] for r in reports] == [60, 120]
  assert _evaluate(model_dir, mesh, all_steps=True, output_dir=out) == []  # all done already
  # Following the run also skips what is done, and stops when no new checkpoint appears in time.
  assert _evaluate(model_dir, mesh, follow_seconds=0.5, output_dir=out) == []


def test_several_runs_side_by_side(toy, tmp_path):
  model_dir, mesh = toy
  step60 = os.path.join(model_dir, "checkpoints", "60")
  reports = _evaluate([step60, model_dir], mesh, run_names=["early", "late"], output_dir=str(tmp_path))
  assert [(r["run"], r["step"]) for r in reports] == [("early", 60), ("late", 120)]


def test_score_is_the_sum_of_target_log_probabilities():
  model = Transformer(TINY)
  tokens = np.array([[0, 5, 6, 7, 8, 9, 0, 0]])
  params = model.init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  targets = np.array([[5, 6, 7, 8, 9, 1, 0, 0]])
  weights = np.array([[0, 0, 1, 1, 1, 1, 0, 0]])  # the last four tokens are the target
  prefix = np.array([[1, 1, 1, 0, 0, 0, 0, 0]])
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": targets, "decoder_loss_weights": weights,
           "decoder_causal_attention": prefix}
  got = float(decoding.score_targets(model, params, batch)[0])
  logits = np.asarray(model.apply({"params": params}, tokens, prefix_mask=prefix), np.float64)[0]
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  want = sum(log_probs[t, targets[0, t]] for t in range(2, 6))
  assert got == pytest.approx(want, rel=1e-5)


def test_each_normalisation_on_a_hand_made_example():
  def row(option, index, ll_tokens, correct):
    return {"idx": np.array([7, index]), "inputs_pretokenized": b"Pick one", "targets_pretokenized": option,
            "targets": np.array(ll_tokens + [0, 0]), "is_correct": correct}
  # "a" (1 char, 2 tokens) scores -2; "bbbb" (4 chars, 5 tokens) scores -3.
  rows = [row(b"a", 0, [3, 1], False), row(b"bbbb", 1, [4, 4, 4, 4, 1], True)]
  content_free = {"a": -0.5, "bbbb": -6.0}
  lineage = predictions.Lineage("r", "/c", 1, "validation", "t_scoring", "t", "c", 0)
  picks = {}
  for norm in predictions.NORMALIZATIONS:
    (record,) = predictions.scoring_records(rows, [-2.0, -3.0], content_free, lineage, norm)
    picks[norm] = record["prediction"]
  (record,) = predictions.scoring_records(rows, [-2.0, -3.0], content_free, lineage, "none")
  assert record["scores"] == {"none": [-2.0, -3.0], "per_token": [-1.0, -0.6], "per_char": [-2.0, -0.75],
                              "calibrated": [-1.5, 3.0]}
  assert picks == {"none": "a", "per_token": "bbbb", "per_char": "bbbb", "calibrated": "bbbb"}
  assert record["example_id"] == 7 and record["target"] == "bbbb" and record["options"] == ["a", "bbbb"]


def test_bad_input_is_one_line(toy, tmp_path):
  model_dir, mesh = toy
  cases = [
      (dict(split="no_such_split"), "has a 'no_such_split' split"),
      (dict(normalization="per_word"), "evaluate.normalization='per_word'"),
  ]
  for kwargs, message in cases:
    with pytest.raises(UserError, match=message):  # the binaries print the message's first line
      _evaluate(model_dir, mesh, **kwargs)
  with pytest.raises(UserError, match="does not exist"):
    _evaluate(str(tmp_path / "missing"), mesh)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no checkpoint found"):
    _evaluate(str(tmp_path / "empty"), mesh)


def test_beam_search_of_width_one_decodes_like_greedy(toy, tmp_path):
  import gin
  model_dir, mesh = toy
  kwargs = dict(mixture_or_task_name="toy_colors_eval", split="test")
  _evaluate(model_dir, mesh, output_dir=str(tmp_path / "greedy"), **kwargs)
  gin.clear_config()
  try:
    gin.bind_parameter("decoder.method", "beam")
    gin.bind_parameter("decoder.num_beams", 1)
    _evaluate(model_dir, mesh, output_dir=str(tmp_path / "beam"), **kwargs)
  finally:
    gin.clear_config()
  name = "predictions_toy_colors_eval_test_step120.jsonl"
  greedy, beam = _records(tmp_path / "greedy" / name), _records(tmp_path / "beam" / name)
  assert [r["prediction"] for r in greedy] == [r["prediction"] for r in beam]
  assert sum(r["correct"] for r in greedy) >= 12  # the toy task is learnt well enough to decode too


def test_progress_counts_tasks_and_examples(capsys, monkeypatch):
  clock = iter([0.0, 20.0, 25.0])  # started, then the two add() calls
  monkeypatch.setattr(evaluation.time, "time", lambda: next(clock))
  progress = evaluation._Progress(total=8, tasks=2, title="mix (validation) @ step 3")
  progress.start_task()
  progress.add(4)  # printed: more than 10 s since the last line
  progress.start_task()
  progress.add(4)  # printed: the last examples
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["eval mix (validation) @ step 3: task 1/2, 4/8 examples, 0.2 examples/s, ETA 0m20s",
                   "eval mix (validation) @ step 3: task 2/2, 8/8 examples, 0.3 examples/s, ETA 0m00s"]
