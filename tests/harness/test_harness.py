"""Tests for flan_jax/harness: lm-evaluation-harness on flan_jax's own model, held to lm-eval's `hf` backend on the
same tiny Llama (trained a few steps here, float32, byte-level BPE trained here): a multiple-choice task (acc,
acc_norm and every option's log-likelihood), a perplexity task (loglikelihood_rolling: word and byte perplexity)
and a generation task (the generated strings), with and without BOS, and with a max length short enough that
contexts are truncated and documents span several rolling windows. Also a flan_jax run directory made from the
same weights, the model arguments and the refusals."""

import functools
import glob
import json
import logging
import os
import re
import sys

import gin
import jax
import numpy as np
import pytest

from flan_jax.checkpoints import restore, run_record, store
from flan_jax.errors import UserError
from flan_jax.harness import FlanJaxLM, scoring
from flan_jax.harness import __main__ as main_module
from flan_jax.model import partitioning
from flan_jax.text import vocabulary
from tests import tiny_pretrained
from tests.checks import one_line

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

ATOL = 1e-4  # a log-likelihood of ours against lm-eval's hf backend's
RTOL = 1e-4  # a perplexity
# (name, model_args both backends get): the first has the model's own max length (16384) and no BOS; the second
# BOS and a max length of 20 tokens, under which contexts are left-truncated and documents take several windows.
SETTINGS = {"plain": "add_bos_token=False", "bos_short": "add_bos_token=True,max_length=20"}
TASKS = ["fj_mc", "fj_ppl", "fj_gen"]


def build(directory: str, seed: int = 0, steps: int = 30) -> float:
  """A tiny Llama with tiny_pretrained's tokenizer, trained `steps` of Adam on tiny_pretrained.TEXT (so that its
  options' scores differ) and saved by transformers; returns the last loss."""
  tok = tiny_pretrained.train_tokenizer()
  bos, eos = tok.token_to_id(tiny_pretrained.BOS), tok.token_to_id(tiny_pretrained.EOS)
  config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=bos, eos_token_id=eos,
                                    head_dim=16, **tiny_pretrained.COMMON)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config)
  ids = torch.tensor([sum(([bos] + tok.encode(t).ids + [eos] for t in tiny_pretrained.TEXT), [])])
  loss = tiny_pretrained.train_briefly(model, ids, steps)
  model.eval().save_pretrained(directory)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": tiny_pretrained.BOS, "eos_token": tiny_pretrained.EOS, "unk_token": tiny_pretrained.UNK,
               "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return loss


def questions(n: int = 16) -> list[dict]:
  return tiny_pretrained.questions(n, seed=7)


DOCUMENTS = tiny_pretrained.TEXT[:4] + ["A short one.", "Tabs\tand   spaces, twice: tabs\tand   spaces."]
# Generation prompts: beginnings of the training text (the trained model continues them), a question, and one
# longer than the short setting's room for a prompt (20 - 6 tokens), which both backends cut from the left.
PROMPTS = [{"prompt": p, "target": ""} for p in (
    "The quick brown", "Instruction tuning teaches", "Premise: the cat", "def f(x):", "Zero-shot evaluation on",
    "Question: Which one jumps over the lazy fox number 3?\nAnswer:",
    "Pack my box with five dozen liquor jugs! Instruction tuning teaches a language")]


def write_tasks(base) -> None:
  """fj_mc (multiple choice), fj_ppl (loglikelihood_rolling) and fj_gen (generate_until) as lm-eval YAML + JSONL."""
  for name, rows in (("mc", questions()), ("ppl", [{"text": t} for t in DOCUMENTS]), ("gen", PROMPTS)):
    (base / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = lambda name: [f"task: fj_{name}", "dataset_path: json",
                         f"dataset_kwargs:\n  data_files:\n    test: {base / (name + '.jsonl')}", "test_split: test"]
  (base / "fj_mc.yaml").write_text("\n".join(common("mc") + [
      "output_type: multiple_choice", 'doc_to_text: "Question: {{question}}\\nAnswer:"', 'doc_to_choice: "{{choices}}"',
      "doc_to_target: label", "metric_list:\n  - metric: acc\n  - metric: acc_norm"]) + "\n")
  (base / "fj_ppl.yaml").write_text("\n".join(common("ppl") + [
      "output_type: loglikelihood_rolling", 'doc_to_text: ""', 'doc_to_target: "{{text}}"',
      "metric_list:", *(f"  - metric: {m}\n    aggregation: {a}\n    higher_is_better: false" for m, a in (
          ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
          ("bits_per_byte", "bits_per_byte")))]) + "\n")
  (base / "fj_gen.yaml").write_text("\n".join(common("gen") + [
      "output_type: generate_until", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{target}}"',
      "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n  do_sample: false",
      "metric_list:\n  - metric: exact_match"]) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("harness")
  model = str(base / "llama")
  loss = build(model)
  assert loss < 0.5 * np.log(320), loss  # far below a uniform guess: a trained model
  write_tasks(base)
  return model, base


@pytest.fixture(scope="module")
def evaluate(setup):
  """simple_evaluate of TASKS by backend ("hf" or "flan_jax") and setting, each once, every sample logged."""
  from lm_eval.tasks import TaskManager
  model, base = setup
  done = {}

  def run(backend: str, setting: str) -> dict:
    if (backend, setting) not in done:
      with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_DATASETS_OFFLINE", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        if "tasks" not in done:  # indexing lm-eval's own tasks takes 10 s: once
          done["tasks"] = TaskManager(include_path=str(base))
        where = f"pretrained={model}" if backend == "hf" else f"checkpoint={model}"
        done[backend, setting] = lm_eval.simple_evaluate(
            model=backend, model_args=f"{where},dtype=float32,{SETTINGS[setting]}", tasks=TASKS,
            task_manager=done["tasks"], batch_size=8, device="cpu", num_fewshot=0, log_samples=True)
    return done[backend, setting]
  return run


def _samples(result: dict, task: str) -> dict:
  return {s["doc_id"]: s for s in result["samples"][task]}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_multiple_choice_matches_the_hf_backend_option_by_option(evaluate, setting):
  ours, theirs = evaluate("flan_jax", setting), evaluate("hf", setting)
  mine, hf = _samples(ours, "fj_mc"), _samples(theirs, "fj_mc")
  assert mine.keys() == hf.keys() and len(mine) == 16
  worst = 0.0
  for doc_id, sample in hf.items():
    assert mine[doc_id]["arguments"] == sample["arguments"]  # the same (context, option) requests
    ll_ours = np.array([float(r[0]) for r in mine[doc_id]["filtered_resps"]])
    ll_hf = np.array([float(r[0]) for r in sample["filtered_resps"]])
    worst = max(worst, float(np.max(np.abs(ll_ours - ll_hf))))
    assert [r[1] for r in mine[doc_id]["filtered_resps"]] == [r[1] for r in sample["filtered_resps"]]  # is greedy
  assert worst < ATOL, worst
  for metric in ("acc,none", "acc_norm,none"):
    assert ours["results"]["fj_mc"][metric] == theirs["results"]["fj_mc"][metric]


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_perplexity_matches_the_hf_backend(evaluate, setting):
  ours, theirs = evaluate("flan_jax", setting)["results"]["fj_ppl"], evaluate("hf", setting)["results"]["fj_ppl"]
  for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
    assert ours[metric] == pytest.approx(theirs[metric], rel=RTOL), metric
  mine, hf = _samples(evaluate("flan_jax", setting), "fj_ppl"), _samples(evaluate("hf", setting), "fj_ppl")
  for doc_id, sample in hf.items():
    assert float(mine[doc_id]["filtered_resps"][0]) == pytest.approx(float(sample["filtered_resps"][0]), abs=ATOL)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_generations_match_the_hf_backend(evaluate, setting):
  mine, hf = _samples(evaluate("flan_jax", setting), "fj_gen"), _samples(evaluate("hf", setting), "fj_gen")
  assert len(hf) == len(PROMPTS)
  assert {k: s["filtered_resps"] for k, s in mine.items()} == {k: s["filtered_resps"] for k, s in hf.items()}
  assert sum(bool(s["filtered_resps"][0]) for s in hf.values()) >= 3, hf  # mostly not empty


def test_greedy_flags_and_empty_contexts_match_the_hf_backend(setup):
  """Continuations the model itself generates are greedy in both backends (the MC options never are), and an empty
  context starts from the prefix token in both."""
  from lm_eval.api.registry import get_model
  model, _ = setup
  ours = FlanJaxLM(checkpoint=model, batch_size=8, max_length=64, dtype="float32")
  theirs = get_model("hf")(pretrained=model, batch_size=8, max_length=64, dtype="float32", device="cpu")
  prompts = ["Instruction tuning teaches", "The quick brown", "def f(x):"]
  generated = ours.generate_until([_Request((p, {"until": ["<none>"], "max_gen_toks": 5})) for p in prompts])
  assert generated == theirs.generate_until([_Request((p, {"until": ["<none>"], "max_gen_toks": 5})) for p in prompts])
  # One-token options of one context share a forward pass (scoring.py): several of each prompt's, one greedy.
  first = [ours.tok_decode(ours.tok_encode(p + g)[len(ours.tok_encode(p)):][:1]) for p, g in zip(prompts, generated)]
  singles = [(p, o) for p, f in zip(prompts, first) for o in dict.fromkeys([f, " the", ".", " a", "s"])]
  assert sum(len(ours.tok_encode(p + o)) == len(ours.tok_encode(p)) + 1 for p, o in singles) >= 10
  requests = [_Request(pair) for pair in [*zip(prompts, generated), *zip(prompts, [" dog", " fox", " zz"]),
                                           ("", "Pack my box"), ("", "<s>Pack my box"), *singles]]
  mine, hf = ours.loglikelihood(requests), theirs.loglikelihood(requests)
  assert [g for _, g in mine] == [g for _, g in hf] and [g for _, g in mine[:3]] == [True] * 3
  assert sum(g for _, g in mine[-len(singles):]) >= 3  # each prompt's greedy first token, found greedy
  np.testing.assert_allclose([ll for ll, _ in mine], [ll for ll, _ in hf], rtol=0, atol=ATOL)


def test_rolling_windows_are_several_under_the_short_max_length(setup):
  """The short setting really splits documents: the first document is longer than 20 tokens."""
  tok = transformers.AutoTokenizer.from_pretrained(setup[0])
  assert len(tok.encode(DOCUMENTS[0])) > 2 * 20


def _save_run(model_dir: str, hf_dir: str) -> None:
  """A flan_jax run directory holding the Hugging Face model's weights as step 7, with its records."""
  pretrained = restore.open_pretrained(hf_dir)
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  params = restore.load_params(pretrained, mesh)
  mngr = store.manager(os.path.join(model_dir, "checkpoints"), async_save=False)
  with store.closing(mngr):
    store.save(mngr, 7, params, {"count": np.zeros((), np.int32)}, force=True)
  run_record.write_run_record(model_dir, pretrained.config, vocabulary.pretrained_vocabulary(hf_dir))


def test_a_run_directory_scores_as_its_pretrained_source(setup, tmp_path):
  hf_dir, _ = setup
  _save_run(str(tmp_path / "run"), hf_dir)
  run = FlanJaxLM(checkpoint=str(tmp_path / "run"), batch_size=8, add_bos_token=False)
  pretrained = FlanJaxLM(checkpoint=hf_dir, batch_size=8, add_bos_token=False)
  assert run.loaded.kind == "run" and run.loaded.step == 7
  pairs = [("Question: Which one jumps?\nAnswer:", " fox"), ("The quick brown", " fox jumps"), ("", "Pack my box")]
  requests = [_Request(p) for p in pairs]
  assert run.tok_encode("The quick brown fox") == pretrained.tok_encode("The quick brown fox")
  np.testing.assert_allclose([r[0] for r in run.loglikelihood(requests)],
                             [r[0] for r in pretrained.loglikelihood(requests)], atol=1e-5)


class _Request:
  def __init__(self, args):
    self.args = args


def test_buckets_are_powers_of_two_or_halfway_capped_at_the_max_length():
  assert [scoring.bucket(n, 100) for n in (1, 16, 17, 33, 64, 65, 99, 100)] == [16, 16, 24, 48, 64, 96, 100, 100]
  assert scoring.bucket(20, 20) == 20 and scoring.bucket(5, 8) == 8
  assert scoring.longest_first([3, 5, 3, 1]) == [1, 0, 2, 3]


def test_model_arguments_are_checked(setup):
  with pytest.raises(UserError, match="checkpoint=PATH"):
    FlanJaxLM()
  with pytest.raises(UserError, match="pretrained"):
    FlanJaxLM(checkpoint=setup[0], pretrained="gpt2")
  with pytest.raises(UserError, match="dtype"):
    FlanJaxLM(checkpoint=setup[0], dtype="float8")
  with pytest.raises(UserError, match="batch_size"):
    FlanJaxLM(checkpoint=setup[0], batch_size=0)


def test_sampling_follows_the_request_and_repeats_with_its_seed(setup):
  lm = FlanJaxLM(checkpoint=setup[0], batch_size=8, max_length=64)
  prompts = ["The quick brown", "Instruction tuning teaches", "def f(x):", "Premise: the cat", "Zero-shot"]

  def generate(**kwargs) -> list[str]:
    return lm.generate_until([_Request((p, {"until": ["<none>"], "max_gen_toks": 8, **kwargs})) for p in prompts])

  greedy = generate()
  assert generate(temperature=0.0) == greedy  # lm-eval's rule: no do_sample and no temperature is greedy
  assert generate(do_sample=True, temperature=0.5, top_k=1) == greedy  # one candidate left: the argmax
  hot = generate(do_sample=True, temperature=5.0)  # near-uniform over 320 tokens: 40 draws, never all greedy
  assert hot != greedy and generate(do_sample=True, temperature=5.0) == hot  # the same seed, the same draws
  lm.seed = 7
  assert generate(do_sample=True, temperature=5.0) != hot
  with pytest.raises(UserError, match="num_beams"):
    generate(num_beams=4)


def test_the_command_hands_lm_eval_the_flan_jax_model():
  argv = main_module.lm_eval_argv(["--model_args", "checkpoint=/m,batch_size=4,dtype=float32", "--tasks", "a", "b"])
  assert argv == ["lm-eval", "run", "--model", "flan_jax", "--model_args", "checkpoint=/m,dtype=float32", "--tasks",
                  "a", "b", "--batch_size", "4"]
  assert main_module.lm_eval_argv(["run", "--model=flan_jax", "-a", "checkpoint=/m", "--batch_size", "2"]) == [
      "lm-eval", "run", "--model", "flan_jax", "-a", "checkpoint=/m", "--batch_size", "2"]
  assert main_module.lm_eval_argv(["--tasks", "a"])[-2:] == ["--batch_size", "16"]
  with pytest.raises(UserError, match="flan_jax model only"):
    main_module.lm_eval_argv(["--model", "hf", "--tasks", "a"])
  ours, theirs = main_module.split_argv(["--tasks", "a", "--gin_file", "m.gin", "--gin.make_mesh.fsdp=2", "--multihost",
                                         "--num_processes=2", "--process_id", "1", "--limit", "3"])
  assert ours == ["--gin_file", "m.gin", "--gin.make_mesh.fsdp=2", "--multihost", "--num_processes=2", "--process_id",
                  "1"]
  assert theirs == ["--tasks", "a", "--limit", "3"]


def _command(argv: list[str], capfd, monkeypatch) -> tuple[int, str]:
  """`python -m flan_jax.harness ARGV` in this process, offline: (exit code, all of file descriptor 2). lm-eval's
  logger gets a stderr handler, as its own set-up gives it, and everything is undone after."""
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
  monkeypatch.setattr(main_module.lm_eval_main, "setup_logging", lambda *a, **k: None)
  monkeypatch.setattr(sys, "argv", list(sys.argv))
  # Indexing lm-eval's own 14,000 task definitions takes 10 s a run (twice for an unknown task); no test here uses
  # them, so its task manager sees the --include_path tasks only.
  from lm_eval.tasks import TaskManager
  monkeypatch.setattr(TaskManager, "__init__", functools.partialmethod(TaskManager.__init__, include_defaults=False))
  logger = logging.getLogger("lm_eval")
  monkeypatch.setattr(logger, "handlers", [logging.StreamHandler(sys.stderr)])
  monkeypatch.setattr(logger, "propagate", False)
  monkeypatch.setattr(logger, "level", logging.INFO)
  capfd.readouterr()
  gin.clear_config()
  code = 0
  try:
    main_module.main(argv)
  except SystemExit as e:
    code = e.code
  finally:
    gin.clear_config()
  return code, capfd.readouterr().err


def test_the_command_evaluates_a_local_task(setup, tmp_path, capfd, monkeypatch):
  """`python -m flan_jax.harness`'s main, end to end and offline, on the local multiple-choice task (its first 2
  questions), with a gin binding for the mesh."""
  model, base = setup
  code, err = _command(["--model_args", f"checkpoint={model},batch_size=2", "--tasks", "fj_mc", "--include_path",
                        str(base), "--limit", "2", "--output_path", str(tmp_path / "out"), "--gin.make_mesh.fsdp=2"],
                       capfd, monkeypatch)
  assert code == 0, err[-3000:]
  assert "Running loglikelihood requests" in err and "Selected Tasks" in err  # progress, and lm-eval's log
  results, = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
  with open(results) as f:
    report = json.load(f)
  assert report["config"]["model"] == "flan_jax" and str(report["config"]["batch_size"]) == "2"
  assert report["config"]["flan_jax_mesh"] == {"data": len(jax.devices()) // 2, "fsdp": 2, "tensor": 1}
  assert set(report["results"]["fj_mc"]) >= {"acc,none", "acc_norm,none"}


MISTAKES = {  # case: (arguments, what the line must say)
    "unknown task": (["--tasks", "fj_mcc"], r"unknown lm-eval task 'fj_mcc' \(did you mean: fj_mc\?\)"),
    "empty checkpoint": (["--tasks", "fj_mc"], r"checkpoint=\S*empty holds no model"),
    "no chat template": (["--tasks", "fj_mc", "--apply_chat_template"], r"llama has no chat template"),
    "dataset offline": (["--tasks", "fj_hub"], r"dataset someone/not_in_the_cache of a task is not available offline"),
    "missing data file": (["--tasks", "fj_missing"], r"a file of the dataset json of a task is missing .*missing"),
    "another backend": (["--tasks", "fj_mc", "--model", "hf"], r"runs the flan_jax model only"),
    "unknown gin binding": (["--tasks", "fj_mc", "--gin.make_mesh.bogus=1"], r"^error: gin: .*bogus"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_command_mistakes_are_one_line_exit_2_and_write_nothing(setup, case, tmp_path, capfd, monkeypatch):
  model, base = setup
  (base / "fj_hub.yaml").write_text(  # a task whose dataset is on the Hugging Face hub, not in any local cache
      "task: fj_hub\ndataset_path: someone/not_in_the_cache\ntest_split: test\noutput_type: multiple_choice\n"
      "doc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
  (base / "fj_missing.yaml").write_text(  # a local task whose data file is not there
      f"task: fj_missing\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {base / 'missing.jsonl'}\n"
      "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
  (tmp_path / "empty").mkdir()
  checkpoint = str(tmp_path / "empty") if case == "empty checkpoint" else model
  argv, pattern = MISTAKES[case]
  out = tmp_path / "out"
  code, err = _command(["--model_args", f"checkpoint={checkpoint}", "--include_path", str(base), "--limit", "2",
                        "--output_path", str(out), "--log_samples", *argv], capfd, monkeypatch)
  line = one_line(err, case)
  assert code == 2 and re.search(pattern, line), (code, line)
  assert not out.exists()
