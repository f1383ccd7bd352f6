"""The study report (flan_jax.reports.study) on cells whose eval predictions are written by hand (no model)."""

import json
import os

import numpy as np
import pytest

from flan_jax import reports
from flan_jax.reports import study as study_report
from tests.checks import one_line_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 20  # examples per dataset, split and template
HELD_OUT = "sentiment"
SIZES = {"small": 3_500_000, "large": 60_000_000}
SEEDS = (0, 1, 2)
RUNS = (("base", 0), ("instructions", 3), ("notemplate", 3), ("instructions", 1), ("instructions", 2))
SETTINGS = reports.Settings(bootstrap=400)


def level(size, seed, condition, n):
  """How many test examples of imdb the template chosen on validation gets right (sst2: one fewer)."""
  extra = {"base": 2 * (seed == 1), "notemplate": seed}.get(condition, 0)
  return {"base": 3, "notemplate": 4, "instructions": 6}[condition] + n + list(SIZES).index(size) + 4 * seed + extra


def accuracies(right):
  """dataset -> split -> template -> examples right: validation picks imdb's template 2 and sst2's template 1;
  on test the other template is better. rte (another cluster) must not count."""
  return {"imdb": {"validation": {1: 10, 2: 12}, "test": {1: right + 1, 2: right}},
          "sst2": {"validation": {1: 12, 2: 10}, "test": {1: right - 1, 2: right + 1}},
          "rte": {"validation": {1: 20}, "test": {1: 20}}}


def expected_best(right):
  """The held-out accuracy (percent): the chosen templates' test accuracies, averaged over imdb and sst2."""
  return 100 * (right + right - 1) / 2 / N


def expected_template_mean(right):
  return 100 * ((right + 0.5) + right) / 2 / N


def record(dataset, template, split, example_id, correct):
  """One scoring predictions line; more score on the target ('yes') when correct."""
  cluster = "nli" if dataset == "rte" else HELD_OUT
  scores = [-1.0, -2.0] if correct else [-2.0, -1.0]
  return {"run": "r", "step": 500, "split": split, "task": f"flan_{dataset}_scoring_t{template}", "dataset": dataset,
          "cluster": cluster, "template": template, "kind": "scoring", "example_id": example_id,
          "options": ["yes", "no"], "target": "yes", "scores": {"none": scores}, "correct": correct}


def write_predictions(directory, right):
  """Examples 0..N-1; the first `right` of each (dataset, split, template) are correct."""
  os.makedirs(directory, exist_ok=True)
  lines = [record(d, t, s, i, i < r) for d, splits in accuracies(right).items() for s, templates in splits.items()
           for t, r in templates.items() for i in range(N)]
  with open(os.path.join(directory, "predictions_sentiment.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return str(directory)


def make_study(root, sizes=tuple(SIZES), seeds=SEEDS, runs=RUNS):
  cells = []
  for size in sizes:
    for seed in seeds:
      for condition, n in runs:
        name = f"{size}-s{seed}-{condition}-{n}"
        cells.append({"id": name, "size": size, "params": SIZES[size], "seed": seed, "condition": condition,
                      "held_out": HELD_OUT, "n_clusters": n,
                      "eval_dir": write_predictions(os.path.join(root, name), level(size, seed, condition, n))})
  return {"name": "test study", "cells": cells}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  manifest = make_study(str(tmp_path_factory.mktemp("study")))
  return manifest, study_report.build(manifest, SETTINGS)


def groups(report):
  return {(g["size"], g["condition"], g["n_clusters"]): g for g in report["groups"]}


def differences(report):
  return {(d["size"], d["baseline"]): d for d in report["differences"]}


def test_condition_means_are_the_mean_over_seeds_of_the_best_validation_template(study):
  _, report = study
  assert report["held_out"] == [HELD_OUT] and report["max_clusters"] == {HELD_OUT: 3}
  assert report["sizes"] == SIZES and report["conditions"] == ["base", "instructions", "notemplate"]
  assert len(report["groups"]) == len(SIZES) * len(RUNS)
  for (size, condition, n), group in groups(report).items():
    rights = [level(size, seed, condition, n) for seed in SEEDS]
    assert group["seeds"] == list(SEEDS) and group["best"]["n_seeds"] == 3
    assert [p["best"] for p in group["per_seed"]] == pytest.approx([expected_best(r) for r in rights])
    assert group["best"]["accuracy"] == pytest.approx(np.mean([expected_best(r) for r in rights]))
    assert group["template_mean"]["accuracy"] == pytest.approx(np.mean([expected_template_mean(r) for r in rights]))
  cell = report["cells"]["small-s1-instructions-3"]
  assert {d: e["best_template"] for d, e in cell["datasets"].items()} == {"imdb": 2, "sst2": 1}
  assert cell["step"] == 500 and cell["best"]["n_datasets"] == 2


def test_template_spread_is_the_mean_over_seeds(study):
  _, report = study
  spread = groups(report)["large", "notemplate", 3]["template_spread"]
  rights = [level("large", seed, "notemplate", 3) for seed in SEEDS]
  imdb, sst2 = spread["datasets"]["imdb"], spread["datasets"]["sst2"]
  assert imdb["min"] == pytest.approx(np.mean([100 * r / N for r in rights]))
  assert imdb["max"] == pytest.approx(np.mean([100 * (r + 1) / N for r in rights]))
  assert imdb["std"] == pytest.approx(100 / N / np.sqrt(2))  # two templates one example apart
  assert sst2["std"] == pytest.approx(200 / N / np.sqrt(2)) and sst2["n_templates"] == 2
  assert spread["std"] == pytest.approx((imdb["std"] + sst2["std"]) / 2)


def test_paired_differences_are_hand_computed(study):
  _, report = study
  diffs = differences(report)
  assert set(diffs) == {(s, b) for s in SIZES for b in ("base", "notemplate")}  # no datasetname cells
  for (size, baseline), d in diffs.items():
    n = 0 if baseline == "base" else 3
    per_seed = [expected_best(level(size, seed, "instructions", 3)) - expected_best(level(size, seed, baseline, n))
                for seed in SEEDS]
    assert d["n_clusters"] == 3 and d["seeds"] == list(SEEDS) and d["n_datasets"] == 2
    assert [p["difference"] for p in d["per_seed"]] == pytest.approx(per_seed)
    assert d["difference"] == pytest.approx(np.mean(per_seed))
    assert 0.0 <= d["above_zero"] <= 1.0
  assert diffs["small", "base"]["above_zero"] == 1.0  # every seed gains 20-30 points
  assert diffs["small", "notemplate"]["per_seed"][2]["difference"] == pytest.approx(0.0)


def test_cis_contain_the_means(study):
  _, report = study
  entries = [(g["best"], "accuracy") for g in report["groups"]] + [(d, "difference") for d in report["differences"]]
  entries += [(c["best"], "accuracy") for c in report["cells"].values()]
  for entry, key in entries:
    assert entry["ci"][0] <= entry[key] <= entry["ci"][1]


def test_hierarchical_ci_is_at_least_as_wide_as_one_seeds_example_ci(study):
  _, report = study
  width = lambda ci: ci[1] - ci[0]
  for group in report["groups"]:  # the seeds are 20 points apart
    example_widths = [width(report["cells"][p["cell"]]["best"]["ci"]) for p in group["per_seed"]]
    assert width(group["best"]["ci"]) >= max(example_widths)


def test_one_seed_gives_the_example_bootstrap_ci(tmp_path):
  report = study_report.build(make_study(str(tmp_path), sizes=("small",), seeds=(1,)), SETTINGS)
  for group in report["groups"]:
    cell = report["cells"][group["per_seed"][0]["cell"]]
    assert group["best"]["ci"] == cell["best"]["ci"] and group["best"]["accuracy"] == cell["best"]["accuracy"]


def test_identical_predictions_differ_by_exactly_zero(tmp_path):
  manifest = make_study(str(tmp_path), sizes=("small",), seeds=(0, 1), runs=(("base", 0), ("instructions", 2)))
  for cell in manifest["cells"]:
    if cell["condition"] == "instructions":
      cell["eval_dir"] = cell["eval_dir"].replace("instructions-2", "base-0")
  (d,) = study_report.build(manifest, SETTINGS)["differences"]
  assert d["difference"] == 0.0 and d["ci"] == [0.0, 0.0] and d["above_zero"] == 0.0
  assert [p["difference"] for p in d["per_seed"]] == [0.0, 0.0]


def test_write_creates_the_report_and_figures(study, tmp_path):
  manifest, built = study
  out = tmp_path / "report"
  report = study_report.write(manifest, str(out), SETTINGS)
  assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(built)) == json.loads(
      json.dumps(report))
  text = (out / "report.md").read_text()
  large = groups(report)["large", "instructions", 3]["best"]
  assert (f"* {HELD_OUT}, large (60M), 3 seeds: instructions {reports.format_estimate(large)} vs base" in text)
  base = differences(report)["large", "base"]
  assert f"vs base {reports.format_estimate(groups(report)['large', 'base', 0]['best'])}: +26.7 points [" in text
  assert f"{base['ci'][1]:+.1f}], 100.0% of replicates above 0" in text and "skipped" not in text
  for name in ("conditions.png", "clusters.png", "scale.png"):
    assert f"]({name})" in text
    assert (out / name).read_bytes().startswith(PNG_SIGNATURE)


def test_figures_without_data_are_skipped_with_a_note(tmp_path):
  manifest = make_study(str(tmp_path / "cells"), sizes=("small",), runs=(("base", 0), ("instructions", 3)))
  report = study_report.write(manifest, str(tmp_path / "out"), SETTINGS)
  assert report["figures"]["conditions"]["file"] == "conditions.png"
  assert report["figures"]["clusters"]["file"] is None and report["figures"]["scale"]["file"] is None
  text = (tmp_path / "out" / "report.md").read_text()
  assert "skipped, no number-of-clusters experiment" in text and "model sizes (sizes: small)" in text
  assert sorted(p for p in os.listdir(tmp_path / "out") if p.endswith(".png")) == ["conditions.png"]


def test_two_held_out_clusters_without_bootstrap(tmp_path):
  manifest = make_study(str(tmp_path / "cells"), sizes=("small",), seeds=(0, 1), runs=RUNS[:2] + RUNS[3:4])
  manifest["cells"] += [dict(c, id=c["id"] + "-nli", held_out="nli") for c in manifest["cells"]]
  report = study_report.write(manifest, str(tmp_path / "out"), reports.Settings(bootstrap=0))
  assert report["held_out"] == ["nli", "sentiment"] and report["bootstrap"] == 0
  nli = {(g["held_out"], g["condition"], g["n_clusters"]): g for g in report["groups"]}["nli", "instructions", 3]
  assert nli["best"] == {"accuracy": 100.0, "ci": None, "n": 40, "n_seeds": 2}  # rte only: 20 examples per seed
  d = next(d for d in report["differences"] if d["held_out"] == "nli")
  assert d["difference"] == 0.0 and d["ci"] is None and d["above_zero"] is None
  text = (tmp_path / "out" / "report.md").read_text()
  assert "no CIs (bootstrap 0)" in text and "* nli, small (3.5M), 2 seeds: instructions 100.0 vs base 100.0" in text
  assert (tmp_path / "out" / "clusters.png").read_bytes().startswith(PNG_SIGNATURE)


def _broken(manifest, tmp_path, case):
  cells = manifest["cells"]
  if case == "missing base":
    manifest["cells"] = [c for c in cells if c["id"] != "small-s1-base-0"]
  elif case == "missing eval_dir":
    cells[3]["eval_dir"] = str(tmp_path / "absent")
  elif case == "no eval_dir field":
    del cells[3]["eval_dir"]
  elif case == "no predictions":
    os.remove(os.path.join(cells[3]["eval_dir"], "predictions_sentiment.jsonl"))
  elif case == "wrong held-out cluster":
    cells[0]["held_out"] = "qa"
    manifest["cells"] = [cells[0]]
  elif case == "bad condition":
    cells[1]["condition"] = "tuned"
  return manifest


@pytest.mark.parametrize("case, message", [
    ("missing base", r"cell 3 \(small-s1-instructions-3\): no base cell with size small, seed 1 .*instructions"),
    ("missing eval_dir", "eval_dir .*absent is not a directory"),
    ("no eval_dir field", "cell 3 .* has no eval_dir"),
    ("no predictions", "study cell small-s1-base-0: .* holds no predictions_"),
    ("wrong held-out cluster", "holds no accuracy of held-out cluster qa .*clusters there: nli, sentiment"),
    ("bad condition", "condition 'tuned': want one of base, instructions"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, case, message):
  manifest = _broken(make_study(str(tmp_path), sizes=("small",), runs=RUNS[:2] + RUNS[3:4]), tmp_path, case)
  one_line_error(lambda: study_report.build(manifest, SETTINGS), message)


def test_answer_stats_show_a_model_that_gives_one_answer_to_everything():
  records = [dict(record(d, 1, "test", i, i < 3), target=("yes" if i < 5 else "no"),
                  scores={"none": [-1.0, -2.0]}) for d in ("imdb", "sst2") for i in range(N)]
  records += [dict(record("imdb", 2, "test", i, True), scores={"none": [-2.0, -1.0]}) for i in range(N)]  # not chosen
  stats = study_report.answer_stats(records, {"imdb": (1, "test"), "sst2": (1, "test")}, "none")
  assert stats == {"top_answer": "yes", "top_share": 100.0, "always_top_accuracy": 100 * 5 / N,
                   "majority_accuracy": 100 * (N - 5) / N}
  assert study_report.answer_stats(records, {"imdb": (1, "test")}, "per_token") is None
