"""The reporting protocol and `python -m flan_jax.report`, on predictions written by hand (no model)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from flan_jax import report as report_cli
from flan_jax import reports
from flan_jax.errors import UserError
from tests import conftest
from tests.checks import one_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = conftest.ROOT


def record(dataset, template, split, example_id, correct, *, cluster="nli", kind="scoring", step=1000,
           scores=None):
  """One predictions line; a scoring example puts more score on 'yes' (the target) when correct."""
  line = {"run": "r", "checkpoint": "/runs/r", "step": step, "split": split,
          "task": f"flan_{dataset}_{kind}_t{template}", "dataset": dataset, "cluster": cluster,
          "template": template, "kind": kind, "example_id": example_id, "prompt": "Is it?",
          "prediction": "yes" if correct else "no", "target": "yes"}
  if kind == "scoring":
    line["options"] = ["yes", "no"]
    good = [-1.0, -2.0] if correct else [-2.0, -1.0]
    line["scores"] = scores or {"none": good, "per_token": good, "per_char": good}
  if correct is not None:
    line["correct"] = correct
  return line


def records_for(accuracies, *, cluster="nli", step=1000, n=10):
  """accuracies: dataset -> split -> template -> number correct out of n (examples 0..n-1)."""
  return [record(dataset, template, split, i, i < right, cluster=cluster, step=step)
          for dataset, splits in accuracies.items() for split, templates in splits.items()
          for template, right in templates.items() for i in range(n)]


def write(path, lines):
  with open(path, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return str(path)


def run_of(name, records):
  steps = {}
  for r in records:
    steps.setdefault(r["step"], []).append(reports.parse_record(json.dumps(r), "test"))
  return reports.Run(name, [], steps)


SETTINGS = reports.Settings(bootstrap=200)

# Validation prefers template 2, test prefers template 1.
DEV_VS_TEST = {"anli": {"validation": {1: 6, 2: 8, 3: 7}, "test": {1: 9, 2: 5, 3: 7}}}


class _Untouchable(dict):
  """A split whose records must not be read."""

  def _fail(self, *args, **kwargs):
    raise AssertionError("the test split was read while choosing the template")

  __getitem__ = __iter__ = __len__ = __contains__ = get = items = keys = values = _fail


def test_template_stats():
  stats = reports.template_stats({1: 50.0, 2: 70.0, 3: 60.0})
  assert stats == {"mean": 60.0, "std": pytest.approx(10.0), "min": 50.0, "max": 70.0, "n_templates": 3}
  assert reports.template_stats({4: 42.0})["std"] == 0.0


def test_template_chosen_on_validation_even_when_test_prefers_another():
  summary = reports.summarize("r", run_of("r", records_for(DEV_VS_TEST)).steps[1000], SETTINGS)
  anli = summary.datasets["anli"]
  assert anli["best_template"] == 2 and anli["reported_split"] == "test"
  assert anli["best"]["accuracy"] == pytest.approx(50.0)  # template 2 on test, not the test winner's 90
  assert anli["splits"]["test"]["max"] == pytest.approx(90.0)
  assert anli["template_mean"]["accuracy"] == pytest.approx(70.0)
  assert anli["splits"]["validation"]["std"] == pytest.approx(10.0)


def test_selection_never_reads_the_test_split():
  validation = {1: {0: 1.0, 1: 0.0}, 2: {0: 1.0, 1: 1.0}, 3: {0: 0.0, 1: 0.0}}
  assert reports.select_template({"validation": validation, "test": _Untouchable()}) == 2
  assert reports.select_template({"test": _Untouchable()}) is None
  assert reports.select_template({"validation": {5: {0: 1.0}, 3: {0: 1.0}}}) == 3  # ties: lowest


def test_no_test_split_reports_validation_and_says_so():
  summary = reports.summarize("r", run_of("r", records_for({"rte": {"validation": {1: 4, 2: 6}}})).steps[1000],
                                SETTINGS)
  rte = summary.datasets["rte"]
  assert rte["reported_split"] == "validation" and rte["best_template"] == 2
  assert rte["best"]["accuracy"] == pytest.approx(60.0)
  assert any("no test split" in note for note in rte["notes"])


def test_cluster_is_the_mean_over_its_datasets():
  accuracies = {"anli": {"validation": {1: 6}, "test": {1: 4}}, "rte": {"validation": {1: 5}, "test": {1: 8}}}
  summary = reports.summarize("r", run_of("r", records_for(accuracies)).steps[1000], SETTINGS)
  nli = summary.clusters["nli"]
  assert nli["best"]["accuracy"] == pytest.approx(60.0) and nli["best"]["n_datasets"] == 2
  assert nli["best"]["ci"][0] <= 60.0 <= nli["best"]["ci"][1]


def test_normalizations_recompute_accuracy_from_scores():
  line = record("anli", 1, "test", 0, True, scores={
      "none": [-1.0, -2.0], "per_token": [-2.0, -1.0], "per_char": [-1.0, -1.0], "calibrated": [-5.0, 3.0]})
  line["target"] = "no"  # index 1; the stored `correct` is ignored for scoring examples
  parsed = reports.parse_record(json.dumps(line), "test")
  assert {n: reports.example_score(parsed, n) for n in reports.NORMALIZATIONS} == {
      "none": 0.0, "per_token": 1.0, "per_char": 0.0, "calibrated": 1.0}  # a tie goes to the first option
  entry, _ = reports.summarize_run(run_of("r", [line]), reports.Settings(normalization="per_token"))
  template = entry["datasets"]["anli"]["splits"]["test"]["templates"]["1"]
  assert template["accuracy"] == 100.0
  assert template["by_normalization"] == {"none": 0.0, "per_token": 100.0, "per_char": 0.0, "calibrated": 100.0}
  assert entry["by_normalization"]["none"]["nli"]["template_mean"] == 0.0


def test_generative_examples_without_correct_are_left_out():
  lines = [record("xsum", 1, "test", i, [True, False, None][i], cluster="summarization", kind="generative")
           for i in range(3)]
  lines[2]["metrics"] = {"rouge1": 41.0}
  summary = reports.summarize("r", run_of("r", lines).steps[1000], SETTINGS)
  xsum = summary.datasets["xsum"]
  assert xsum["skipped"] == 1 and xsum["template_mean"]["accuracy"] == pytest.approx(50.0)
  assert xsum["metrics"] == {"test": {"1": {"rouge1": 41.0}}}


def test_bootstrap_ci_contains_the_estimate_narrows_and_is_seeded():
  rng = np.random.default_rng(1)
  small, large = rng.random(40) < 0.7, rng.random(4000) < 0.7
  settings = reports.Settings(bootstrap=1000, seed=3)
  ci_small = reports.as_json(reports.estimate(small, "k", settings), settings)
  ci_large = reports.as_json(reports.estimate(large, "k", settings), settings)
  for entry in (ci_small, ci_large):
    assert entry["ci"][0] <= entry["accuracy"] <= entry["ci"][1]
  assert ci_large["ci"][1] - ci_large["ci"][0] < (ci_small["ci"][1] - ci_small["ci"][0]) / 3
  again = reports.as_json(reports.estimate(small, "k", settings), settings)
  other = reports.as_json(reports.estimate(small, "k", reports.Settings(bootstrap=1000, seed=4)), settings)
  assert again == ci_small and other["ci"] != ci_small["ci"]


def test_resampling_counts_matches_resampling_examples():
  values = np.array([0.0] * 30 + [1.0] * 70)
  by_counts = reports.resample_means(values, 20000, np.random.default_rng(0))
  rng = np.random.default_rng(1)
  by_examples = values[rng.integers(0, len(values), (20000, len(values)))].mean(axis=1)
  assert by_counts.mean() == pytest.approx(by_examples.mean(), abs=0.002)
  assert by_counts.std() == pytest.approx(by_examples.std(), rel=0.05)


def test_paired_bootstrap():
  settings = reports.Settings(bootstrap=1000)
  a = {i: float(i % 3 != 0) for i in range(300)}
  same = reports.as_json(reports.paired_difference(a, dict(a), "k", settings), settings, "difference")
  assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0]
  b = {i: float(i % 2 == 0) for i in range(300)}  # 66.7% against 50%
  clear = reports.as_json(reports.paired_difference(a, b, "k", settings), settings, "difference")
  assert clear["difference"] == pytest.approx(100 * (200 - 150) / 300)
  assert 0.0 < clear["ci"][0] < clear["difference"] < clear["ci"][1]


def test_runs_on_different_examples_are_refused():
  base = records_for({"anli": {"test": {1: 5}}})
  with pytest.raises(UserError, match="different tasks: flan_rte_scoring_t1 \\(test\\) is only in tuned"):
    reports.check_same_examples("tuned", base + records_for({"rte": {"test": {1: 5}}}), "base", base)
  with pytest.raises(UserError, match="different examples of flan_anli_scoring_t1 \\(test\\): 0 only in tuned, 2"):
    reports.check_same_examples("tuned", base, "base", records_for({"anli": {"test": {1: 5}}}, n=12))


def test_held_out_cluster_first():
  assert reports.cluster_order({"nli", "commonsense", "qa"}, "qa") == ("qa", ["qa", "commonsense", "nli"])
  assert reports.cluster_order({"nli"}, None) == ("nli", ["nli"])
  assert reports.cluster_order({"nli", "qa"}, None) == (None, ["nli", "qa"])


def _run_main(argv, capfd):
  code = report_cli.main([str(a) for a in argv])
  out, err = capfd.readouterr()
  return code, out, err


def test_command_end_to_end(tmp_path, capfd):
  tuned_dir = tmp_path / "tuned"
  tuned_dir.mkdir()
  tuned = {"anli": {"validation": {1: 6, 2: 8, 3: 7}, "test": {1: 9, 2: 7, 3: 7}},
           "rte": {"validation": {1: 5, 2: 4}}}
  write(tuned_dir / "predictions_nli_step1000.jsonl", records_for(tuned))
  write(tuned_dir / "predictions_nli_step500.jsonl", records_for(DEV_VS_TEST, step=500)
        + records_for({"rte": {"validation": {1: 3, 2: 4}}}, step=500))
  write(tuned_dir / "predictions_piqa_step1000.jsonl",
        records_for({"piqa": {"validation": {1: 5}, "test": {1: 6}}}, cluster="commonsense"))
  base = {"anli": {"validation": {1: 5, 2: 4, 3: 6}, "test": {1: 5, 2: 5, 3: 3}}, "rte": {"validation": {1: 5, 2: 5}}}
  base_file = write(tmp_path / "base.jsonl", records_for(base, step=0)
                    + records_for({"piqa": {"validation": {1: 5}, "test": {1: 5}}}, cluster="commonsense", step=0))
  out_dir = tmp_path / "report"
  code, out, err = _run_main(["--predictions", f"tuned={tuned_dir}", f"base={base_file}", "--output_dir", out_dir,
                              "--baseline", "base", "--held_out", "nli", "--bootstrap", "200"], capfd)
  assert code == 0, err
  for name in ("report.json", "report.md", "clusters.png", "templates.png", "steps_tuned.png"):
    assert f"wrote {out_dir / name}" in out
  for name in ("clusters.png", "templates.png", "steps_tuned.png"):
    data = (out_dir / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
  assert not (out_dir / "steps_base.png").exists()

  report = json.loads((out_dir / "report.json").read_text())
  assert report["clusters"] == ["nli", "commonsense"] and report["held_out"] == "nli"
  anli = report["runs"]["tuned"]["datasets"]["anli"]
  assert anli["best_template"] == 2 and anli["best"]["accuracy"] == pytest.approx(70.0)  # 7 of 10 on test
  nli = report["runs"]["tuned"]["clusters"]["nli"]["best"]
  assert nli["accuracy"] == pytest.approx((70.0 + 50.0) / 2)  # rte: validation only, template 1
  assert report["runs"]["tuned"]["datasets"]["rte"]["reported_split"] == "validation"
  assert [s["step"] for s in report["runs"]["tuned"]["by_step"]] == [500, 1000]
  assert report["runs"]["tuned"]["by_step"][0]["clusters"]["nli"]["best"]["accuracy"] == pytest.approx(45.0)
  assert list(report["comparisons"]["tuned"]["clusters"]) == ["nli", "commonsense"]
  diff = report["comparisons"]["tuned"]["clusters"]["nli"]["best"]
  assert diff["difference"] == pytest.approx(((70 - 30) + (50 - 50)) / 2)  # base picks template 3 on anli
  assert diff["ci"][0] <= diff["difference"] <= diff["ci"][1]
  markdown = (out_dir / "report.md").read_text()
  assert "nli (held out)" in markdown and "tuned beats base by 20.0 points, 95% CI [" in out
  assert "| anli | nli | tuned | test | 2 | 70.0 [" in markdown


def test_identical_runs_differ_by_zero(tmp_path, capfd):
  path = write(tmp_path / "p.jsonl", records_for(DEV_VS_TEST))
  code, out, err = _run_main(["--predictions", f"a={path}", f"b={path}", "--output_dir", tmp_path / "out",
                              "--baseline", "b"], capfd)
  assert code == 0, err
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  entry = report["comparisons"]["a"]["clusters"]["nli"]["best"]
  assert entry["difference"] == 0.0 and entry["ci"] == [0.0, 0.0]
  assert "a ties with b (0.0 points), 95% CI [0.0, 0.0]" in out


def _bad_inputs(tmp_path):
  good = write(tmp_path / "good.jsonl", records_for(DEV_VS_TEST))
  other = write(tmp_path / "other.jsonl", records_for({"rte": {"test": {1: 5}}}))
  broken = tmp_path / "broken.jsonl"
  broken.write_text(json.dumps(record("anli", 1, "test", 0, True)) + "\n{not json\n")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  (tmp_path / "nothing").mkdir()
  no_field = write(tmp_path / "nofield.jsonl", [{"task": "x"}])
  return {
      "missing path": ([f"a={tmp_path / 'absent.jsonl'}"], "absent.jsonl does not exist"),
      "not JSON": ([f"a={broken}"], "broken.jsonl line 2 is not JSON"),
      "not predictions": ([f"a={no_field}"], "nofield.jsonl line 1 has no dataset, cluster"),
      "different tasks": ([f"a={good}", f"b={other}", "--baseline", "b"], "different tasks"),
      "normalization": ([f"a={good}", "--normalization", "softmax"], "unknown normalization 'softmax'"),
      "normalization not scored": ([f"a={good}", "--normalization", "calibrated"], "have no 'calibrated' scores"),
      "empty file": ([f"a={empty}"], "empty.jsonl is empty"),
      "empty directory": ([f"a={tmp_path / 'nothing'}"], "holds no predictions_*.jsonl"),
      "no run name": ([good], "write RUN=PATH"),
      "unknown baseline": ([f"a={good}", "--baseline", "c"], "--baseline c is not one of the runs"),
      "unknown cluster": ([f"a={good}", "--held_out", "qa"], "--held_out qa: no predictions of that cluster"),
      "bad number": ([f"a={good}", "--bootstrap", "many"], "invalid int value"),
  }


@pytest.mark.parametrize("case", ["missing path", "not JSON", "not predictions", "different tasks", "normalization",
                                  "normalization not scored", "empty file", "empty directory", "no run name",
                                  "unknown baseline",
                                  "unknown cluster", "bad number"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capfd, case):
  predictions, message = _bad_inputs(tmp_path)[case]
  code, out, err = _run_main(["--predictions", *predictions, "--output_dir", tmp_path / "out"], capfd)
  assert code == 2 and out == ""
  line = one_line(err)
  assert line.startswith("error: ") and message in line, err


def test_repeated_flag_adds_runs(tmp_path, capfd):
  path = write(tmp_path / "p.jsonl", records_for(DEV_VS_TEST))
  code, _, err = _run_main(["--predictions", f"a={path}", "--predictions", f"b={path}", "--output_dir",
                            tmp_path / "out", "--bootstrap", "0"], capfd)
  assert code == 0, err
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert list(report["runs"]) == ["a", "b"] and report["runs"]["a"]["datasets"]["anli"]["best"]["ci"] is None


def test_templates_must_share_examples():
  lines = records_for({"anli": {"test": {1: 5}}}) + records_for({"anli": {"test": {2: 5}}}, n=8)
  with pytest.raises(UserError, match="anli \\(test\\) has other examples with template 2 \\(8 scored\\)"):
    reports.summarize("r", run_of("r", lines).steps[1000], SETTINGS)


def test_repeated_example_is_refused(tmp_path):
  path = write(tmp_path / "p.jsonl", records_for(DEV_VS_TEST) + [record("anli", 1, "test", 3, True)])
  with pytest.raises(UserError, match="p.jsonl line 61 repeats example 3 of flan_anli_scoring_t1 \\(test\\)"):
    reports.load_run("r", [path])


def test_command_imports_no_tensorflow_seqio_or_jax():
  code = ("import sys, flan_jax.report; "
          "print(sorted(m for m in ('tensorflow', 'seqio', 'jax', 'matplotlib') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"
