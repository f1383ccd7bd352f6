"""Tests for flan_jax/harness beyond a plain Hugging Face directory, each held to lm-eval's own `hf` backend on the
tiny trained Llama of test_harness.py (float32):

- a chat template in the tokenizer (`apply_chat_template=True`), zero-shot and one-shot as a multi-turn
  conversation (one task continuing an assistant turn that `gen_prefix` starts): the same prompts, option
  log-likelihoods, accuracies and generations;
- the model written as a float32 GGUF file by `python -m flan_jax.export` and evaluated from that file, with the
  tokenizer flan_jax rebuilds from the GGUF metadata;
- a flan_jax run fine-tuned from the Hugging Face directory for a few steps by `python -m flan_jax.train`, and its
  export by `python -m flan_jax.export`, evaluated as a run, and as an exported directory by both backends.
"""

import json
import os

import numpy as np
import pytest

from flan_jax import export as export_binary
from flan_jax import train as train_binary
from flan_jax.harness import loading
from tests.checkpoints.test_pretrained import _run_ok
from tests.harness import test_harness as base

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

ATOL = base.ATOL  # a log-likelihood of ours against lm-eval's hf backend's
# Role-tagged turns, each closed by EOS, after one BOS; the generation prompt opens the assistant's turn. lm-eval
# renders every prompt with it (transformers' apply_chat_template) in both backends.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
PLAIN_TASKS = ["fj_mc", "fj_ppl", "fj_gen"]
# The chat tasks: test_harness's multiple-choice and generation tasks, and the same with one example as an earlier
# user/assistant exchange (fj_gen's targets are empty, which lm-eval would leave out of the conversation: a fixed
# one); fj_mc_1shot also starts the assistant's answer with "Answer:" (the template is then rendered without a
# generation prompt and the final assistant message continued).
CHAT_TASKS = ["fj_mc", "fj_gen", "fj_mc_1shot", "fj_gen_1shot"]
ONE_SHOT = {"fj_mc_1shot": ("mc.yaml", 'gen_prefix: "Answer:"\n'),
            "fj_gen_1shot": ("gen.yaml", 'doc_to_target: "and so on."\n')}
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(Hugging Face directory of test_harness's trained tiny Llama with CHAT_TEMPLATE, the folder of task YAMLs)."""
  where = tmp_path_factory.mktemp("formats")
  model = str(where / "llama")
  base.build(model)
  config_file = os.path.join(model, "tokenizer_config.json")
  with open(config_file) as f:
    config = json.load(f)
  with open(config_file, "w") as f:
    json.dump({**config, "chat_template": CHAT_TEMPLATE}, f)
  tasks = where / "tasks"
  tasks.mkdir()
  base.write_tasks(tasks)
  for name, (included, extra) in ONE_SHOT.items():
    (tasks / f"{name}.yaml").write_text(
        f"include: fj_{included}\ntask: {name}\nnum_fewshot: 1\nfewshot_split: test\n{extra}")
  return model, tasks


@pytest.fixture(scope="module")
def evaluate(setup):
  """evaluate(backend, path, chat) -> simple_evaluate's result, each once: PLAIN_TASKS with the tokenizers' own BOS
  rule, or CHAT_TASKS with apply_chat_template (and BOS asked for, which the template's leading BOS must not
  double); every sample logged, and under "general_config" what lm-eval's results file would record of the run
  (its GeneralConfigTracker)."""
  from lm_eval.loggers import EvaluationTracker
  from lm_eval.tasks import TaskManager
  _, tasks = setup
  done = {}

  def run(backend: str, path: str, chat: bool = False) -> dict:
    if (backend, path, chat) not in done:
      with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_DATASETS_OFFLINE", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        if "tasks" not in done:  # our YAMLs only: indexing lm-eval's own tasks takes 10 s
          done["tasks"] = TaskManager(include_path=str(tasks), include_defaults=False)
        where = f"pretrained={path}" if backend == "hf" else f"checkpoint={path}"
        tracker = EvaluationTracker()  # what a results file would record about the evaluation
        done[backend, path, chat] = lm_eval.simple_evaluate(
            model=backend, model_args=f"{where},dtype=float32" + (",add_bos_token=True" if chat else ""),
            tasks=CHAT_TASKS if chat else PLAIN_TASKS, task_manager=done["tasks"], batch_size=8, device="cpu",
            apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=True,
            evaluation_tracker=tracker)
        done[backend, path, chat]["general_config"] = tracker.general_config_tracker
    return done[backend, path, chat]
  return run


def _samples(result: dict, task: str) -> dict:
  return {s["doc_id"]: s for s in result["samples"][task]}


def _log_likelihoods(result: dict, task: str) -> dict:
  """doc id -> its requests' log-likelihoods (the options of a multiple-choice question, a document's total)."""
  out = {}
  for doc_id, sample in _samples(result, task).items():
    responses = sample["filtered_resps"]
    out[doc_id] = np.array([float(r[0]) for r in responses] if isinstance(responses[0], (list, tuple))
                           else [float(responses[0])])
  return out


def assert_same_results(ours: dict, theirs: dict, tasks: list[str]) -> None:
  """Both results have the same requests (prompts included), every log-likelihood within ATOL, the same greedy
  flags, metrics and generated strings (not all of them empty)."""
  assert set(ours["samples"]) == set(theirs["samples"]) == set(tasks)
  for task in tasks:
    mine, hf = _samples(ours, task), _samples(theirs, task)
    assert mine.keys() == hf.keys() and len(hf) >= 6, task
    for doc_id, sample in hf.items():
      assert mine[doc_id]["arguments"] == sample["arguments"], (task, doc_id)  # the same prompts and continuations
    first = next(iter(hf.values()))["arguments"][0]
    if len(first) == 2 and isinstance(first[1], dict):  # generate_until: (prompt, generation kwargs)
      assert {k: s["filtered_resps"] for k, s in mine.items()} == {k: s["filtered_resps"] for k, s in hf.items()}, task
      assert sum(bool(s["filtered_resps"][0].strip()) for s in hf.values()) >= 2, (task, hf)  # not all empty
      continue
    ll_ours, ll_hf = _log_likelihoods(ours, task), _log_likelihoods(theirs, task)
    worst = max(float(np.max(np.abs(ll_ours[k] - ll_hf[k]))) for k in hf)
    print(f"{task}: max |log-likelihood difference| {worst:.1e} over {len(hf)} documents")
    assert worst < ATOL, (task, worst)
    if task.startswith("fj_mc"):
      assert [[r[1] for r in mine[k]["filtered_resps"]] for k in hf] == [[r[1] for r in hf[k]["filtered_resps"]]
                                                                          for k in hf], task
    metrics = {m: v for m, v in theirs["results"][task].items() if isinstance(v, float) and "_stderr" not in m}
    assert metrics, task
    for metric, value in metrics.items():  # accuracies exactly, perplexities within base.RTOL
      assert ours["results"][task][metric] == (pytest.approx(value, rel=base.RTOL) if task == "fj_ppl" else value), (
          task, metric)


# --- A chat template. ------------------------------------------------------------------------------------

def test_chat_template_prompts_scores_and_generations_match_the_hf_backend(setup, evaluate):
  model, _ = setup
  ours, theirs = evaluate("flan_jax", model, chat=True), evaluate("hf", model, chat=True)
  assert_same_results(ours, theirs, CHAT_TASKS)
  for task in CHAT_TASKS:
    for doc_id, sample in _samples(theirs, task).items():
      prompt = sample["arguments"][0][0]
      assert prompt.startswith(base.tiny_pretrained.BOS + "[user] ") and prompt.count(base.tiny_pretrained.BOS) == 1, (
          task, prompt)  # the template's BOS, and not another from add_bos_token
      turns = 2 if task.endswith("1shot") else 1  # the example is an earlier exchange: a user and an assistant turn
      assert prompt.count("[user] ") == turns == prompt.count("[assistant] "), (task, prompt)
      assert prompt.endswith("[assistant] Answer:" if task == "fj_mc_1shot" else "[assistant] "), (task, prompt)


def test_the_results_record_the_chat_template_as_the_hf_backends_do(setup, evaluate):
  """lm-eval records the template a run applied (`chat_template`, `chat_template_sha` in its results file) from the
  model's chat_template(); FlanJaxLM must give the one it applies, as HFLM does."""
  model, _ = setup
  ours, theirs = (evaluate(backend, model, chat=True)["general_config"] for backend in ("flan_jax", "hf"))
  assert theirs.chat_template == CHAT_TEMPLATE and theirs.chat_template_sha
  assert (ours.chat_template, ours.chat_template_sha) == (theirs.chat_template, theirs.chat_template_sha)


# --- GGUF. ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_file(setup, tmp_path_factory):
  """The tiny model as one float32 GGUF file, written by the export binary."""
  model, _ = setup
  out = str(tmp_path_factory.mktemp("gguf"))
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={model}", f"--gin.OUTPUT_DIR={out}",
                          "--gin.EXPORT_FORMAT='gguf'", "--gin.EXPORT_DTYPE='float32'"])
  name, = os.listdir(out)
  return os.path.join(out, name)


def _texts() -> list[str]:
  """Every text the tasks give a tokenizer: questions with each option, documents, prompts, and chat prompts."""
  texts = [f"Question: {q['question']}\nAnswer: {c}" for q in base.questions() for c in q["choices"]]
  texts += base.DOCUMENTS + [p["prompt"] for p in base.PROMPTS]
  return texts + [f"{base.tiny_pretrained.BOS}[user] {t}{base.tiny_pretrained.EOS}\n[assistant] " for t in texts[:8]]


def test_the_gguf_tokenizer_is_the_original(setup, gguf_file):
  """The tokenizer flan_jax rebuilds from the GGUF metadata encodes (BOS added by its own rule) and decodes every
  text of the tasks as the Hugging Face directory's tokenizer does, with the same special tokens and chat template."""
  model, _ = setup
  rebuilt = loading.open_checkpoint(gguf_file).tokenizer
  original = transformers.AutoTokenizer.from_pretrained(model)
  for text in _texts():
    ids = original.encode(text)
    assert rebuilt.encode(text) == ids, text
    assert rebuilt.decode(ids) == original.decode(ids), text
  assert (rebuilt.bos_token, rebuilt.eos_token) == (original.bos_token, original.eos_token)
  assert rebuilt.chat_template == original.chat_template == CHAT_TEMPLATE


def test_a_gguf_file_scores_as_its_source_under_the_hf_backend(setup, gguf_file, evaluate):
  model, _ = setup
  ours, theirs = evaluate("flan_jax", gguf_file), evaluate("hf", model)
  assert (ours["config"]["flan_jax_kind"], ours["config"]["flan_jax_checkpoint"]) == ("gguf", gguf_file)
  assert_same_results(ours, theirs, PLAIN_TASKS)


# --- A trained run and its export. ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
  """(run directory, its Hugging Face export): the tiny model fine-tuned 3 steps on the 3-task mixture by the train
  binary, in float32 at a learning rate high enough to move its scores, then exported in float32."""
  model, _ = setup
  run, exported = str(tmp_path_factory.mktemp("run")), str(tmp_path_factory.mktemp("run_export") / "hf")
  _run_ok(train_binary, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={model}", f"--gin.MODEL_DIR={run}",
                         "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", LENGTHS, "--gin.TRAIN_STEPS=3",
                         "--gin.BATCH_SIZE=8", "--gin.LEARNING_RATE=1e-3", "--gin.make_schedule.schedule='constant'",
                         "--gin.make_schedule.warmup_steps=0", "--gin.ModelConfig.dtype='float32'",
                         "--gin.ModelConfig.remat_policy='none'"])
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={run}", f"--gin.OUTPUT_DIR={exported}",
                          "--gin.EXPORT_DTYPE='float32'"])
  return run, exported


def test_a_trained_run_scores_as_its_export_under_both_backends(setup, trained, evaluate):
  model, _ = setup
  run, exported = trained
  as_run = evaluate("flan_jax", run)
  assert (as_run["config"]["flan_jax_kind"], as_run["config"]["flan_jax_step"]) == ("run", 3)
  assert_same_results(as_run, evaluate("hf", exported), PLAIN_TASKS)
  assert_same_results(evaluate("flan_jax", exported), evaluate("hf", exported), PLAIN_TASKS)
  # The training moved the scores well beyond the tolerance: the run is not the untrained model.
  tuned, untrained = _log_likelihoods(as_run, "fj_mc"), _log_likelihoods(evaluate("hf", model), "fj_mc")
  moved = max(float(np.max(np.abs(tuned[k] - untrained[k]))) for k in untrained)
  print(f"training moved an option's log-likelihood by up to {moved:.2f}")
  assert moved > 100 * ATOL, moved
