"""Tests for flan_jax/text/formats.py: decoder-native examples and chat templates, held to transformers and
lm-evaluation-harness on tiny Llama models with a BPE tokenizer trained here (with and without BOS,
with and without a chat template)."""

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
from tests.end_to_end.test_binaries import run_main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# ChatML, as SmolLM2 and Qwen write it; the BOS variant puts the tokenizer's BOS first, as Llama 3's does.
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_BOS = "{{ bos_token }}" + CHAT
PROMPT = "Question: {question}\nAnswer:"
LENGTHS = {"inputs": 64, "targets": 16}
WORDS = ["fox", "dog", "cat", "mat", "box", "model", "language", "cluster", "premise", "tabs", "spaces", "jugs"]
KINDS = {"plain": (False, None), "bos": (True, None), "chat": (False, CHAT), "chat_bos": (True, CHAT_BOS)}


def build(directory: str, add_bos: bool, chat_template, seed: int = 0) -> None:
  """A tiny random Llama with a trained byte-level BPE (+ ChatML's two special tokens), saved by transformers."""
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
  transformers.LlamaForCausalLM(config).eval().save_pretrained(directory)
  tok.save(os.path.join(directory, "tokenizer.json"))
  config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": add_bos,
            "tokenizer_class": "PreTrainedTokenizerFast"}
  if chat_template:
    config["chat_template"] = chat_template
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)


def questions(n: int = 24) -> list[dict]:
  rng = np.random.default_rng(5)
  out = []
  for i in range(n):
    choices = [str(c) for c in rng.choice(WORDS, 4, replace=False)]
    choices[i % 4] = choices[i % 4] + ("s" if i % 3 else "")  # options of unequal lengths
    question = f"Which one jumps over the lazy {WORDS[i % len(WORDS)]} number {i}?"
    out.append({"question": question, "choices": choices, "label": i % 4, "answer": choices[i % 4]})
  return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Models of every kind, and one JSONL file registered as a flan_jax task and as an lm-eval task."""
  base = tmp_path_factory.mktemp("formats")
  models = {}
  for kind, (add_bos, template) in KINDS.items():
    models[kind] = str(base / kind)
    build(models[kind], add_bos, template)
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


def _eval(directory: str, out: str, kind: str, normalization: str = "none") -> dict:
  gin.bind_parameter("example_format.name", _format_of(kind))
  report, = evaluation.evaluate(directory, mixture_or_task_name="fj_mc_scoring_t0", task_feature_lengths=LENGTHS,
                                split="validation", batch_size=8, output_dir=out, normalization=normalization,
                                mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
  path, = glob.glob(os.path.join(out, "predictions_fj_mc_scoring_t0_validation_step*.jsonl"))
  with open(path) as f:
    return report, [json.loads(line) for line in f]


def _lm_eval_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool):
  """lm-evaluation-harness's HFLM._encode_pair, written out over the transformers tokenizer."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
  head = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
  return head, whole[len(head):]


def _reference_log_likelihoods(directory: str, kind: str, records) -> list[list[float]]:
  """Each option's summed log-probability in transformers, under lm-eval's conventions."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
  chat = kind.startswith("chat")
  out = []
  for record in records:
    context = record["prompt"]
    if chat:
      context = tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                              add_generation_prompt=True)
    scores = []
    for option in record["options"]:
      head, tail = _lm_eval_pair(tokenizer, context, option if chat else " " + option,
                                 add_special_tokens=KINDS[kind][0] and not chat)
      ids = torch.tensor([head + tail])
      with torch.no_grad():
        log_probs = torch.log_softmax(model(ids[:, :-1]).logits[0].double(), -1)
      positions = torch.arange(len(head) - 1, len(head) + len(tail) - 1)
      scores.append(float(log_probs[positions, ids[0, len(head):]].sum()))
    out.append(scores)
  return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_option_log_likelihoods_equal_transformers_under_lm_eval_conventions(setup, kind, tmp_path, clean):
  models, _ = setup
  _, records = _eval(models[kind], str(tmp_path), kind)
  assert len(records) == 24
  ours = [r["scores"]["none"] for r in records]
  np.testing.assert_allclose(ours, _reference_log_likelihoods(models[kind], kind, records), atol=1e-4)
  for r in records:  # per_char divides by the option's own characters, as lm-eval's acc_norm does
    np.testing.assert_allclose(r["scores"]["per_char"], np.array(r["scores"]["none"]) / [len(o) for o in r["options"]])


def test_lm_evaluation_harness_reports_the_same_accuracies(setup, tmp_path, clean, monkeypatch):
  lm_eval = pytest.importorskip("lm_eval")
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  models, base = setup
  for kind in ("plain", "bos", "chat"):
    add_bos, template = KINDS[kind]
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={models[kind]},dtype=float32,add_bos_token={add_bos}",
        tasks=["fj_mc"], task_manager=lm_eval.tasks.TaskManager(include_path=base), batch_size=8, device="cpu",
        apply_chat_template=template is not None, num_fewshot=0)["results"]["fj_mc"]
    ours = {}
    for normalization in ("none", "per_char"):
      out = tmp_path / f"{kind}_{normalization}"
      report, _ = _eval(models[kind], str(out), kind, normalization)
      ours[normalization] = report["metrics"]["fj_mc_scoring_t0"]["accuracy"]
      gin.clear_config()
    assert ours["none"] == pytest.approx(100 * results["acc,none"]), kind
    assert ours["per_char"] == pytest.approx(100 * results["acc_norm,none"]), kind


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


def test_resuming_or_evaluating_in_another_format_is_one_line(tuned_chat, tmp_path, clean, capsys):
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
                               "--gin.example_format.name='prompt'"], capsys)
  assert code == 2 and "made with the example format 'chat' but this run asks for 'prompt'" in err
  assert len(err.strip().splitlines()) == 1
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
