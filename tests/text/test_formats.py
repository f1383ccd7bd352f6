"""Tests for flan_jax/text/formats.py: decoder-native examples and chat templates, held to transformers and
lm-evaluation-harness on tiny Llama models trained a few steps here, with a BPE tokenizer trained here (with
and without BOS, with and without a chat template): every option's log-likelihood, request by request, is
lm-eval's own number (`simple_evaluate(..., log_samples=True)`)."""

import glob
import json
import os

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax import checkpoints
from flan_jax.checkpoints import run_record
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer
from flan_jax.text import formats, run_text, tokenizers
import flan_tasks  # noqa: F401
from flan_tasks import files, templates
from tests import tiny_pretrained
from tests.checkpoints.test_pretrained import _run_ok
from tests.checks import assert_trees_close, one_line, run_main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# ChatML, as SmolLM2 and Qwen write it; the BOS variant puts the tokenizer's BOS first, as Llama 3's does.
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_BOS = "{{ bos_token }}" + CHAT
PROMPT = "Question: {question}\nAnswer:"
LENGTHS = {"inputs": 64, "targets": 16}
KINDS = {"plain": (False, None), "bos": (True, None), "chat": (False, CHAT), "chat_bos": (True, CHAT_BOS)}
TRAIN_STEPS = 30
ATOL = 1e-4  # flan_jax's log-likelihood of an option against lm-eval's


def build(directory: str, add_bos: bool, chat_template, seed: int = 0) -> float:
  """A tiny Llama with a trained byte-level BPE (+ ChatML's two special tokens), trained a few steps on
  tiny_pretrained.TEXT and saved by transformers; returns the last training loss."""
  from tokenizers import AddedToken, processors
  tok = tiny_pretrained.train_tokenizer()
  tok.add_special_tokens([AddedToken("<|im_start|>", special=True, normalized=False),
                          AddedToken("<|im_end|>", special=True, normalized=False)])
  bos, eos = tok.token_to_id(tiny_pretrained.BOS), tok.token_to_id(tiny_pretrained.EOS)
  if add_bos:  # as Llama's tokenizer.json does it
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
  config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=bos, eos_token_id=eos,
                                    head_dim=16, **tiny_pretrained.COMMON)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config)
  texts = [[bos] + tok.encode(t, add_special_tokens=False).ids + [eos] for t in tiny_pretrained.TEXT]
  loss = _train(model, torch.tensor([sum(texts, [])]))
  model.eval().save_pretrained(directory)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": add_bos,
            "tokenizer_class": "PreTrainedTokenizerFast"}
  if chat_template:
    config["chat_template"] = chat_template
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return loss


def _train(model, ids, steps: int = TRAIN_STEPS) -> float:
  return tiny_pretrained.train_briefly(model, ids, steps)


def questions(n: int = 24) -> list[dict]:
  return tiny_pretrained.questions(n, seed=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Models of every kind, and one JSONL file registered as a flan_jax task and as an lm-eval task."""
  base = tmp_path_factory.mktemp("formats")
  models = {}
  for kind, (add_bos, template) in KINDS.items():
    models[kind] = str(base / kind)
    loss = build(models[kind], add_bos, template)
    assert loss < 0.5 * np.log(322), loss  # far below a uniform guess over the 322 tokens (5.8): a trained model
  data = base / "mc.jsonl"
  data.write_text("".join(json.dumps(q) + "\n" for q in questions()))
  files.jsonl_task("fj_mc", {"train": str(data), "validation": str(data)}, [(PROMPT, "{answer}")],
                   options_field="choices", cluster="test")
  (base / "fj_mc.yaml").write_text("\n".join([
      "task: fj_mc", "dataset_path: json", f"dataset_kwargs:\n  data_files:\n    test: {data}",
      "test_split: test", "output_type: multiple_choice", 'doc_to_text: "Question: {{question}}\\nAnswer:"',
      'doc_to_choice: "{{choices}}"', "doc_to_target: label",
      "metric_list:\n  - metric: acc\n  - metric: acc_norm"]) + "\n")
  return models, str(base)


@pytest.fixture
def clean():
  gin.clear_config()
  yield
  gin.clear_config()


def _format_of(kind: str) -> str:
  return "chat" if kind.startswith("chat") else "prompt"


def _eval(directory: str, out: str, kind: str, normalization: str = "none") -> tuple[dict, list[dict]]:
  gin.bind_parameter("example_format.name", _format_of(kind))
  report, = evaluation.evaluate(directory, mixture_or_task_name="fj_mc_scoring_t0", task_feature_lengths=LENGTHS,
                                split="validation", batch_size=8, output_dir=out, normalization=normalization,
                                mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
  path, = glob.glob(os.path.join(out, "predictions_fj_mc_scoring_t0_validation_step*.jsonl"))
  with open(path) as f:
    return report, [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def ours(setup, tmp_path_factory):
  """flan_jax's eval of fj_mc, once per (kind, normalization): kind, normalization -> (report, records)."""
  models, _ = setup
  done = {}

  def run(kind: str, normalization: str = "none"):
    if (kind, normalization) not in done:
      gin.clear_config()
      try:
        done[kind, normalization] = _eval(models[kind], str(tmp_path_factory.mktemp(f"{kind}_{normalization}")),
                                          kind, normalization)
      finally:
        gin.clear_config()
    return done[kind, normalization]
  return run


@pytest.fixture(scope="module")
def harness(setup):
  """lm-evaluation-harness's `simple_evaluate` on fj_mc with every sample logged, once per kind of model (with
  and without BOS, with and without the chat template): kind -> its results."""
  lm_eval = pytest.importorskip("lm_eval")
  from lm_eval.tasks import TaskManager
  models, base = setup
  done = {}

  def run(kind: str) -> dict:
    if kind not in done:
      add_bos, template = KINDS[kind]
      with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_DATASETS_OFFLINE", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        if "tasks" not in done:  # indexing lm-eval's own tasks takes 10 s: once
          done["tasks"] = TaskManager(include_path=base)
        done[kind] = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={models[kind]},dtype=float32,add_bos_token={add_bos}",
            tasks=["fj_mc"], task_manager=done["tasks"], batch_size=8, device="cpu",
            apply_chat_template=template is not None, num_fewshot=0, log_samples=True)
    return done[kind]
  return run


def _by_question(records, samples) -> tuple[dict, dict]:
  """flan_jax's records and lm-eval's samples, each keyed by its question's prompt: one to one, all 24."""
  ours = {r["prompt"]: r for r in records}
  theirs = {PROMPT.format(question=s["doc"]["question"]): s for s in samples}
  assert len(ours) == len(records) == 24 and len(theirs) == len(samples) == 24
  assert ours.keys() == theirs.keys()
  return ours, theirs


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_option_log_likelihood_equals_lm_evaluation_harness_s(ours, harness, kind):
  _, records = ours(kind)
  mine, theirs = _by_question(records, harness(kind)["samples"]["fj_mc"])
  delimiter = "" if KINDS[kind][1] else " "  # lm-eval drops the target delimiter under a chat template
  for prompt, sample in theirs.items():
    record = mine[prompt]
    assert (record["example_id"], record["options"]) == (sample["doc_id"], sample["doc"]["choices"])
    assert [cont for _, cont in sample["arguments"]] == [delimiter + o for o in record["options"]]
    assert [tuple(r) for r, in sample["resps"]] == [tuple(r) for r in sample["filtered_resps"]]  # unfiltered
    assert record["correct"] == bool(sample["acc"]), prompt  # the same prediction, question by question
  # Each request's log-likelihood, as lm-eval computed it, against flan_jax's score of that option.
  assert_trees_close({p: r["scores"]["none"] for p, r in mine.items()},
                     {p: [ll for ll, _ in s["filtered_resps"]] for p, s in theirs.items()}, rtol=0, atol=ATOL)
  for r in records:  # per_char divides by the option's own characters, as lm-eval's acc_norm does
    np.testing.assert_allclose(r["scores"]["per_char"], np.array(r["scores"]["none"]) / [len(o) for o in r["options"]])
  # A trained model: an option's log-likelihood per token is no near-constant -log(vocabulary size).
  assert np.std([s for r in records for s in r["scores"]["per_token"]]) > 0.5


@pytest.mark.parametrize("kind", list(KINDS))
def test_lm_evaluation_harness_reports_the_same_accuracies(ours, harness, kind):
  results = harness(kind)["results"]["fj_mc"]
  assert ours(kind)[0]["metrics"]["fj_mc_scoring_t0"]["accuracy"] == pytest.approx(100 * results["acc,none"])
  assert ours(kind, "per_char")[0]["metrics"]["fj_mc_scoring_t0"]["accuracy"] == pytest.approx(
      100 * results["acc_norm,none"])


def test_the_bos_moves_every_option_s_log_likelihood(ours):
  """With and without BOS are two comparisons, not one made twice: the trained model scores every option
  differently after a BOS."""
  for without, bos in (("plain", "bos"), ("chat", "chat_bos")):
    scores = {kind: np.array([r["scores"]["none"] for r in ours(kind)[1]]) for kind in (without, bos)}
    assert scores[without].shape == scores[bos].shape == (24, 4)
    moved = np.abs(scores[without] - scores[bos])
    assert moved.min() > 2 * ATOL and np.median(moved) > 1e-2, (without, bos, moved)  # each by more than ATOL


def _stream(kind: str, directory: str, role: str, fmt: str):
  """The first unpacked decoder features of fj_mc's tasks in one format."""
  task = {"train": "fj_mc", "score": "fj_mc_scoring_t0", "generate": "fj_mc_eval_t0"}[role]
  with run_text(vocabulary=tokenizers.from_directory(directory), example_format=fmt):
    ds = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split="validation", shuffle=False)
    ex = next(ds.as_numpy_iterator())
    converter = data_lib.feature_converter(False, data_lib.vocabulary(task))
    return ex, next(converter(ds, LENGTHS).as_numpy_iterator())


@pytest.mark.parametrize("kind", ["plain", "bos"])
def test_a_training_example_is_the_tokens_of_the_whole_text(setup, kind, clean):
  models, _ = setup
  tokenizer = transformers.AutoTokenizer.from_pretrained(models[kind])
  ex, features = _stream(kind, models[kind], "train", "prompt")
  text = ex["inputs_pretokenized"].decode() + " " + ex["targets_pretokenized"].decode()
  whole = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]  # BOS exactly when the tokenizer adds it
  assert (whole[0] == tokenizer.bos_token_id) == (kind == "bos")
  n = len(whole) - 1
  inputs, targets = features["decoder_input_tokens"], features["decoder_target_tokens"]
  assert inputs[:n].tolist() == whole[:-1] and targets[:n].tolist() == whole[1:]
  assert not targets[n:].any()
  assert tokenizer.eos_token_id not in targets[:n - 1].tolist()  # never after the prompt
  prompt = len(tokenizer(ex["inputs_pretokenized"].decode())["input_ids"])
  assert features["decoder_loss_weights"].tolist()[:n + 1] == [0] * (prompt - 1) + [1] * (n - prompt + 1) + [0]


def test_the_t5_format_stays_on_request(setup, clean):
  models, _ = setup
  ex, features = _stream("plain", models["plain"], "train", "t5")
  eos = tokenizers.from_directory(models["plain"]).eos_id
  tokens = features["decoder_target_tokens"].tolist()
  assert tokens.count(eos) == 2  # after the prompt and after the target, tokenized apart


def test_chat_training_example_is_the_rendered_conversation(setup, clean):
  models, _ = setup
  tokenizer = transformers.AutoTokenizer.from_pretrained(models["chat_bos"])
  ex, features = _stream("chat_bos", models["chat_bos"], "train", "chat")
  user = [{"role": "user", "content": ex["inputs_pretokenized"].decode()}]
  both = user + [{"role": "assistant", "content": ex["targets_pretokenized"].decode()}]
  whole = tokenizer.apply_chat_template(both, tokenize=True, return_dict=False)
  head = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True, return_dict=False)
  n = len(whole) - 1
  assert features["decoder_input_tokens"][:n].tolist() == whole[:-1]
  assert features["decoder_target_tokens"][:n].tolist() == whole[1:]
  weights = features["decoder_loss_weights"].tolist()
  assert sum(weights) == len(whole) - len(head) + 1  # the assistant turn; the generation prompt's "\n" moves into it
  assert tokenizer.convert_ids_to_tokens(whole[-2]) == "<|im_end|>"


@pytest.fixture(scope="module")
def tuned_chat(setup, tmp_path_factory):
  """A 1-step chat-format run from the BOS + chat-template model: (run, its export, the base model)."""
  from flan_jax import export, train
  models, _ = setup
  base = tmp_path_factory.mktemp("chat_run")
  model_dir, out = str(base / "run"), str(base / "hf")
  lengths = f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"
  _run_ok(train, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={models['chat_bos']}",
                  f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=fj_mc", lengths,
                  "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", "--gin.example_format.name='chat'",
                  "--gin.ModelConfig.dtype='float32'", "--gin.ModelConfig.remat_policy='none'"])
  _run_ok(export, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={model_dir}", f"--gin.OUTPUT_DIR={out}",
                   "--gin.EXPORT_DTYPE='float32'"])
  return model_dir, out, models["chat_bos"]


def _our_greedy(checkpoint: str, task: str, fmt: str, n: int) -> list[list[int]]:
  """flan_jax's eval decode of the first n examples of a generative task: tokens up to the stop."""
  config = checkpoints.pretrained_model_config(checkpoint) if checkpoints.is_pretrained(checkpoint) else \
      checkpoints.recorded_model_config(checkpoint)
  vocab = checkpoints.starting_vocabulary(checkpoint)
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  rules = partitioning.axis_rules()
  model = Transformer(config)
  _, params = checkpoints.restore_params(checkpoint, config, mesh, rules,
                                        partitioning.sharded_param_structs(model, mesh, rules))
  with run_text(vocabulary=vocab, example_format=fmt):
    ds = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split="validation", shuffle=False).take(n)
    batch = next(data_lib.feature_converter(False, vocab)(ds, LENGTHS).batch(n).as_numpy_iterator())
    prompts = [p.decode() for p in ds.map(lambda ex: ex["inputs_pretokenized"]).as_numpy_iterator()]
  stops = formats.stop_ids(vocab, fmt)
  with partitioning.activate(mesh, rules):
    tokens = np.asarray(decoding.greedy_decode(model, params, batch, max_decode_length=LENGTHS["targets"],
                                               eos_id=stops, vocab_size=vocab.vocab_size))
  out = []
  for row in tokens.tolist():
    cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
    out.append(row[:cut])
  return prompts, out


def _their_greedy(directory: str, prompts, chat: bool) -> list[list[int]]:
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
  out = []
  for prompt in prompts:
    if chat:
      ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
    else:
      ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
      generated = model.generate(torch.tensor([ids]), max_new_tokens=LENGTHS["targets"], do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
    out.append(generated[0, len(ids):].tolist())
  return out


def test_exported_chat_run_generates_what_flan_jax_decodes(tuned_chat, clean):
  model_dir, out, _ = tuned_chat
  assert run_record.load_format(os.path.join(model_dir, run_record.VOCABULARY))["format"] == "chat"
  config = json.load(open(os.path.join(out, "tokenizer_config.json")))
  assert config["chat_template"] == CHAT_BOS and config["add_bos_token"] is True
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == [
      tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]  # generation ends at the end of turn
  prompts, ours = _our_greedy(model_dir, "fj_mc_eval_t0", "chat", 4)
  assert ours == _their_greedy(out, prompts, chat=True)


@pytest.mark.parametrize("kind", ["plain", "bos"])
def test_prompt_format_generates_what_transformers_generates(setup, kind, clean):
  models, _ = setup
  prompts, ours = _our_greedy(models[kind], "fj_mc_eval_t0", "prompt", 4)
  assert ours == _their_greedy(models[kind], prompts, chat=False)


def test_resuming_or_evaluating_in_another_format_is_one_line(tuned_chat, tmp_path, clean, capfd):
  model_dir = tuned_chat[0]
  gin.bind_parameter("example_format.name", "prompt")
  with pytest.raises(UserError, match="made with the example format 'chat' but this run asks for 'prompt'"):
    evaluation.evaluate(model_dir, mixture_or_task_name="fj_mc_scoring_t0", task_feature_lengths=LENGTHS,
                        split="validation", batch_size=8, output_dir=str(tmp_path),
                        mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
  assert not os.listdir(tmp_path)
  # Resuming the run in another format: one line, exit 2, the run's records untouched.
  from flan_jax import train
  record = open(os.path.join(model_dir, run_record.VOCABULARY, run_record.FORMAT)).read()
  code, err = run_main(train, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={tuned_chat[2]}",
                               f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=fj_mc",
                               f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
                               "--gin.example_format.name='prompt'"], capfd)
  assert code == 2 and "made with the example format 'chat' but this run asks for 'prompt'" in one_line(err)
  assert open(os.path.join(model_dir, run_record.VOCABULARY, run_record.FORMAT)).read() == record


def test_chat_without_a_template_is_one_line(setup, tmp_path, clean):
  models, _ = setup
  gin.bind_parameter("example_format.name", "chat")
  with pytest.raises(UserError, match="needs a chat template, and the tokenizer .* has none"):
    evaluation.evaluate(models["plain"], mixture_or_task_name="fj_mc_scoring_t0", task_feature_lengths=LENGTHS,
                        split="validation", batch_size=8, output_dir=str(tmp_path),
                        mesh=partitioning.make_mesh(devices=jax.devices()[:1]))


@pytest.mark.parametrize("make, message", [
    (lambda: templates.Template("Q: {q}", "{answer}", delimiter=3), "the delimiter must be a string"),
    (lambda: templates.Template("Q: {q}", ""), "the target is empty"),
    (lambda: files.templates_of([("a", "b", "c", "d")]), "give a prompt string, or"),
])
def test_bad_templates_are_one_line(make, message):
  with pytest.raises(UserError, match=message):
    make()


def test_default_delimiter_and_lm_eval_split():
  default = lambda prompt: formats.tf_delimiter(tf.constant(prompt), None).numpy().decode()
  assert default("Answer:") == " "
  assert [default(p) for p in ("Answer:\n", "A: ", "")] == ["", "", ""]
  encode = lambda texts: [[ord(c) for c in t] for t in texts]
  assert formats.split_ids(encode, "Answer: ", "Paris") == ([ord(c) for c in "Answer:"], [ord(c) for c in " Paris"])


def test_chat_rendering_equals_apply_chat_template(setup):
  models, _ = setup
  tokenizer = transformers.AutoTokenizer.from_pretrained(models["chat_bos"])
  messages = [{"role": "user", "content": "Hi {there}"}, {"role": "assistant", "content": "Yes."}]
  for gen in (False, True):
    ours = formats.render_chat(CHAT_BOS, messages[:1 if gen else 2], gen, {"bos_token": "<s>", "eos_token": "</s>"})
    assert ours == tokenizer.apply_chat_template(messages[:1 if gen else 2], tokenize=False, add_generation_prompt=gen)
