"""Tests for flan_jax/metrics.py: JSONL lines, TensorBoard events, a disabled writer, the ETA."""

import glob
import json
import os

import pytest
import tensorflow as tf

from flan_jax import metrics


def read_jsonl(path):
  return [json.loads(line) for line in open(path)]


def read_events(logdir):
  """{(step, tag): value} from every event file under `logdir`."""
  points = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        points[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
  return points


class FakeClock:

  def __init__(self, now=100.0):
    self.now = now

  def __call__(self):
    return self.now


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
    writer.write_scalars(10, {"loss": 2.5, "accuracy": 0.25})
    writer.write_scalars(20, {"loss": 1.25, "accuracy": 0.5})
  assert read_jsonl(tmp_path / "train_metrics.jsonl") == [
      {"loss": 2.5, "accuracy": 0.25, "step": 10}, {"loss": 1.25, "accuracy": 0.5, "step": 20}]
  assert read_events(tmp_path / "tensorboard" / "train") == {
      (10, "loss"): 2.5, (10, "accuracy"): 0.25, (20, "loss"): 1.25, (20, "accuracy"): 0.5}


def test_a_second_writer_by_name_with_a_prefix(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), enabled=True, name="eval") as writer:
    writer.write_scalars(4, {"accuracy": 62.5}, prefix="nli")
  assert read_jsonl(tmp_path / "eval_metrics.jsonl") == [{"nli/accuracy": 62.5, "step": 4}]
  assert read_events(tmp_path / "tensorboard" / "eval") == {(4, "nli/accuracy"): 62.5}


def test_jsonl_appends_across_runs(tmp_path):
  for step in (1, 2):
    with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
      writer.write_scalars(step, {"loss": float(step)})
  assert [m["step"] for m in read_jsonl(tmp_path / "train_metrics.jsonl")] == [1, 2]
  assert set(read_events(tmp_path / "tensorboard" / "train")) == {(1, "loss"), (2, "loss")}


def test_train_step_line_and_tokens_per_second(tmp_path, capsys):
  clock = FakeClock()
  throughput = metrics.Throughput(100, tokens_per_step=512, clock=clock)
  throughput.start(1)
  clock.now += 10.0  # 2 steps a second
  scalars = {"loss": 1.23456, "accuracy": 0.5, "learning_rate": 1e-3, "grad_norm": 0.7, "target_tokens": 300.0}
  with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
    writer.write_train_step(21, scalars, throughput)
  assert capsys.readouterr().out == (
      "step 21/100 | loss 1.2346 | acc 0.500 | lr 1.00e-03 | 1,024 tok/s | ETA 0m39s\n")
  line = read_jsonl(tmp_path / "train_metrics.jsonl")[0]
  assert list(line) == [*scalars, "tokens_per_second", "step"]
  assert line["tokens_per_second"] == 1024.0 and line["step"] == 21
  events = read_events(tmp_path / "tensorboard" / "train")
  assert events[(21, "tokens_per_second")] == 1024.0
  assert events[(21, "loss")] == pytest.approx(1.23456)


def test_disabled_writer_writes_nothing(tmp_path, capsys):
  throughput = metrics.Throughput(10, tokens_per_step=8, clock=FakeClock())
  with metrics.MetricsWriter(str(tmp_path), enabled=False) as writer:
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_train_step(2, {"loss": 1.0, "accuracy": 0.0, "learning_rate": 0.1}, throughput)
    writer.log("hello")
  assert os.listdir(tmp_path) == []
  assert capsys.readouterr().out == ""


def test_throughput_on_a_fake_clock():
  clock = FakeClock()
  throughput = metrics.Throughput(1000, tokens_per_step=100, clock=clock)
  assert throughput.measure(1) == (0.0, "?")  # not started
  throughput.start(1)
  assert throughput.measure(1) == (0.0, "?")  # no timed step done
  clock.now += 4.0
  assert throughput.measure(5) == (100.0, "16m35s")  # 1 step/s, 995 steps left
  clock.now += 996.0
  assert throughput.measure(501) == (50.0, "16m38s")  # 500 steps in 1000 s, 499 left


def test_eta_format():
  assert metrics.format_eta(0) == "0m00s"
  assert metrics.format_eta(59.9) == "0m59s"
  assert metrics.format_eta(3599) == "59m59s"
  assert metrics.format_eta(3600) == "1h00m"
  assert metrics.format_eta(2 * 3600 + 5 * 60 + 59) == "2h05m"
