"""Tests for tasks/embedded.py: the offline collection the demo and the tests train on."""

import seqio
import t5.data  # noqa: F401  (t5 must import cleanly beside seqio and tfds)
import t5.evaluation.metrics as t5_metrics

from flan_jax import task_info
import flan_tasks  # noqa: F401
from flan_tasks import embedded

LENGTHS = {"inputs": 128, "targets": 32}


def take(name, split="train", n=60):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False)
  return [ex for _, ex in zip(range(n), ds.as_numpy_iterator())]


def test_t5_metrics_work():
  assert t5_metrics.accuracy(["a", "b"], ["a", "c"]) == {"accuracy": 50.0}


def test_collection_shape():
  clusters = {}
  for cluster, name, *_ in embedded.DATASETS:
    clusters.setdefault(cluster, []).append(name)
  assert len(clusters) >= 4 and all(len(v) >= 3 for v in clusters.values())
  assert all(len(templates) >= 3 for *_, templates in embedded.DATASETS)
  assert sum("options" in fields for _, _, _, fields, _ in embedded.DATASETS) >= 6


def test_examples_are_filled_and_deterministic():
  for _, name, *_ in embedded.DATASETS:
    first, again = take(embedded.PREFIX + name, n=20), take(embedded.PREFIX + name, n=20)
    assert len(first) == 20
    for a, b in zip(first, again, strict=True):
      assert a["inputs_pretokenized"] == b["inputs_pretokenized"]
      assert a["inputs_pretokenized"] and a["targets_pretokenized"]
      assert b"{" not in a["inputs_pretokenized"] and b"}" not in a["inputs_pretokenized"]


def test_seeded_template_choice_covers_every_template():
  for _, name, _, _, templates in embedded.DATASETS:
    seen = set()
    for ex in take(embedded.PREFIX + name, n=200):
      text = ex["inputs_pretokenized"].decode()
      seen |= {i for i, t in enumerate(templates) if t.inputs.split("{")[0] in text}
    assert len(seen) == len(templates), (name, seen)


def test_options_contain_the_target():
  for _, name, _, fields, _ in embedded.DATASETS:
    if "options" not in fields:
      continue
    for ex in take(embedded.PREFIX + name + "_eval", split="validation", n=30):
      text, target = ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()
      if "OPTIONS:" in text:
        assert f"- {target}" in text.split("OPTIONS:")[1].splitlines()
    scoring = take(embedded.PREFIX + name + "_scoring", split="validation", n=30)
    assert any(ex["is_correct"] for ex in scoring) and not all(ex["is_correct"] for ex in scoring)


def test_leave_one_cluster_out_mixtures():
  for cluster in embedded.CLUSTERS:
    held_out = {embedded.PREFIX + n for c, n, *_ in embedded.DATASETS if c == cluster}
    train = {t.name for t in seqio.get_mixture_or_task(f"{embedded.PREFIX}no_{cluster}").tasks}
    evals = {t.name for t in seqio.get_mixture_or_task(f"{embedded.PREFIX}eval_{cluster}").tasks}
    assert train and not train & held_out
    assert {task_info.lookup(t).dataset for t in evals} == held_out  # one task per template
    assert {task_info.eval_task(n, 0) for n in held_out} <= evals


def test_pretraining_text_states_the_facts_without_any_task_format():
  documents = embedded.pretrain_text("train")
  assert len(documents) == embedded.PRETRAIN_EXAMPLES["train"] and len(set(documents)) > 0.9 * len(documents)
  # Every template's fixed wording, at least four words of it, must be absent from the plain text.
  phrases = set()
  for *_, templates in embedded.DATASETS:
    for template in templates:
      for piece in template.inputs.split("{"):
        words = piece.split("}")[-1].strip(" \n.?:\"").split()
        if len(words) >= 4:
          phrases.add(" ".join(words))
  text = "\n".join(documents)
  assert "?" not in text and "OPTIONS" not in text
  assert not [p for p in phrases if p in text]
  # The knowledge the held-out sentiment cluster needs is there: review phrases next to their label.
  assert any("positive" in d and "delicious food" in d.lower() for d in documents)
  ds = take(embedded.PRETRAIN_TASK, n=3)
  assert all(ex["inputs_pretokenized"] == b"" and ex["targets_pretokenized"] for ex in ds)


def test_format_ablations_show_the_raw_fields():
  (notemplate,) = take("embedded_color_nli_notemplate", n=1)
  (named,) = take("embedded_color_nli_datasetname", n=1)
  raw = notemplate["inputs_pretokenized"].decode()
  assert raw.startswith("The ") and "\nOPTIONS:\n- yes" in raw and "entail" not in raw
  assert named["inputs_pretokenized"].decode() == "[Inference: color_nli] " + raw
  assert notemplate["targets_pretokenized"] == named["targets_pretokenized"]


def test_ablation_and_cluster_count_mixtures():
  tasks = lambda name: {t.name for t in seqio.get_mixture_or_task(name).tasks}
  base = tasks("embedded_no_sentiment")
  for variant in embedded.VARIANTS:
    assert tasks(f"embedded_no_sentiment_{variant}") == {f"{t}_{variant}" for t in base}
  first = {embedded.PREFIX + n for c, n, *_ in embedded.DATASETS if c == embedded.tuning_clusters("sentiment", 1)[0]}
  assert tasks("embedded_no_sentiment_clusters1") == first
  assert len(tasks("embedded_no_sentiment_clusters2")) == 6
  assert embedded.tuning_clusters("nli", 2) == ["topic", "arithmetic"]
  scoring = tasks("embedded_eval_sentiment_scoring")
  assert scoring and all(task_info.lookup(t).kind == "scoring" and task_info.lookup(t).template is not None
                         for t in scoring)
