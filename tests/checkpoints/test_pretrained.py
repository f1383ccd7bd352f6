"""Tests for flan_jax/checkpoints/ (hf, restore, export, safetensors_io): Hugging Face import, export and parity.

Every model here is a tiny random one that `transformers` builds and saves in the test.
"""

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.checkpoints import safetensors_io
from flan_jax.errors import UserError
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer
from flan_jax.text import run_text, tokenizers
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from tests import tiny_pretrained
from tests.checks import assert_trees_equal, one_line, one_line_error, run_main
from tests.end_to_end.test_binaries import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ARCHS = list(tiny_pretrained.ARCHITECTURES)
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """arch -> (directory, transformers model); llama is saved in several shards, the others in one file."""
  base = tmp_path_factory.mktemp("hf")
  out = {}
  for arch in ARCHS:
    directory = str(base / arch)
    out[arch] = directory, tiny_pretrained.build(arch, directory, max_shard_size="40KB" if arch == "llama" else None)
  return out


def _logits(config, params, tokens, **kwargs):
  return np.asarray(Transformer(config).apply({"params": params}, tokens, **kwargs))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_with_padding_and_mixed_lengths(models, arch):
  directory, hf = models[arch]
  p = checkpoints.open_pretrained(directory)
  params = checkpoints.load_params(p)
  rng = np.random.default_rng(0)
  lengths = np.array([24, 17, 6])  # longer than mistral's window of 12, so the window matters
  tokens = rng.integers(3, p.config.vocab_size, (3, 24))
  valid = np.arange(24)[None] < lengths[:, None]
  tokens = np.where(valid, tokens, 0)
  with torch.no_grad():
    ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()
  got = _logits(p.config, params, tokens, segment_ids=valid.astype(np.int32))
  diff = np.abs(ref - got)[valid].max()
  print(f"{arch}: max |logit difference| {diff:.2e}")
  assert diff < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_is_token_identical(models, arch):
  directory, hf = models[arch]
  p = checkpoints.open_pretrained(directory)
  params = checkpoints.load_params(p)
  eos = hf.config.eos_token_id
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, p.config.vocab_size, n) for n in (5, 9, 3)]  # different lengths, one batch
  length = max(map(len, prompts)) + 16
  tokens = np.zeros((3, length), np.int32)
  prefix = np.zeros((3, length), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)], prefix[row, :len(prompt)] = prompt, 1
  batch = {"decoder_input_tokens": tokens, "decoder_causal_attention": prefix}
  ours = np.asarray(decoding.greedy_decode(Transformer(p.config), params, batch, max_decode_length=16,
                                           eos_id=eos, vocab_size=p.config.vocab_size))
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      theirs = hf.generate(torch.tensor(prompt[None]), max_new_tokens=16, do_sample=False,
                           pad_token_id=eos)[0, len(prompt):].numpy()
    n = len(theirs) if eos not in theirs else list(theirs).index(eos) + 1
    np.testing.assert_array_equal(ours[row, :n], theirs[:n])


def _state_dict(model):
  return {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch, mesh_shape", [("llama", None), ("qwen2", (2, 2, 2)), ("mistral", (1, 8, 1))])
def test_import_export_round_trip_is_bit_identical(models, tmp_path, arch, mesh_shape):
  directory, hf = models[arch]
  mesh = partitioning.make_mesh(*mesh_shape) if mesh_shape else None
  out = str(tmp_path / "exported")
  files = checkpoints.export_checkpoint(directory, out, dtype="float32", max_shard_gb=60e3 / 2 ** 30, mesh=mesh)
  assert len(files) > 1 and os.path.isfile(os.path.join(out, safetensors_io.INDEX))
  again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  want, got = _state_dict(hf), _state_dict(again)
  assert set(got) == set(want)
  for name in want:
    assert np.array_equal(want[name], got[name]), name
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.eos_token == tiny_pretrained.EOS and tok.bos_token == tiny_pretrained.BOS


def test_sharded_placement_matches_one_device(models):
  directory, _ = models["qwen2"]
  p = checkpoints.open_pretrained(directory)
  single = checkpoints.load_params(p)
  for shape in [(1, 8, 1), (2, 2, 2)]:
    sharded = checkpoints.load_params(p, partitioning.make_mesh(*shape))
    wq = sharded["layers"]["attn"]["wq"]
    assert wq.sharding.shard_shape(wq.shape) != wq.shape  # really split over devices
    assert_trees_equal(single, sharded)


def test_bfloat16_export_is_bit_identical(tmp_path):
  directory = str(tmp_path / "bf16")
  hf = tiny_pretrained.build("tied", directory, dtype="bfloat16")
  out = str(tmp_path / "exported")
  checkpoints.export_checkpoint(directory, out, dtype="bfloat16")
  again = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert again.dtype == torch.bfloat16
  for name, value in hf.state_dict().items():
    assert torch.equal(value, again.state_dict()[name]), name


# --- Through the binaries: tune from the imported model, eval, export. ------------------------------

@pytest.fixture(scope="module")
def tuned(models, tmp_path_factory):
  directory, _ = models["llama"]
  model_dir = str(tmp_path_factory.mktemp("tuned"))
  from flan_jax import train
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):  # the train binary's main, in this process
    _run_ok(train, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={directory}",
                    f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli", LENGTHS,
                    "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.train.log_every=1",
                    "--gin.ModelConfig.dtype='float32'", "--gin.ModelConfig.remat_policy='none'"])
  return directory, model_dir, printed.getvalue()


def test_first_loss_equals_the_transformers_loss_on_the_same_batch(models, tuned):
  from flan_jax.data import pipeline as data_lib
  directory, model_dir, out = tuned
  assert "peak host memory" in out
  first = json.loads(open(os.path.join(model_dir, "train_metrics.jsonl")).readline())
  assert first["step"] == 1
  with run_text(vocabulary=tokenizers.from_directory(directory)):
    ds = data_lib.get_dataset("embedded_no_nli", {"inputs": 96, "targets": 16}, "train", 8, seed=0)
    batch = next(ds.as_numpy_iterator())
  # This tokenizer adds no BOS, so each example's stream starts with its prompt's own first token.
  assert models["llama"][1].config.bos_token_id not in batch["decoder_input_tokens"][0]
  hf = models["llama"][1]
  total, weight = 0.0, 0.0
  for row in range(8):  # each packed example on its own: positions restart, no cross-example attention
    segments = batch["decoder_segment_ids"][row]
    for s in set(segments.tolist()) - {0}:
      where = segments == s
      with torch.no_grad():
        logits = hf(torch.tensor(batch["decoder_input_tokens"][row][where][None]).long()).logits[0]
      nll = torch.nn.functional.cross_entropy(logits, torch.tensor(batch["decoder_target_tokens"][row][where]).long(),
                                              reduction="none").numpy()
      w = batch["decoder_loss_weights"][row][where]
      total += float(np.sum(nll * w))
      weight += float(np.sum(w))
  assert first["loss"] == pytest.approx(total / weight, rel=1e-5)


def _run_ok(module, argv):
  """Runs a binary's main in this process, expecting success."""
  import gin

  from flan_jax import cli
  gin.clear_config()
  try:
    cli.run(module.main, argv)
  finally:
    gin.clear_config()


def test_tuned_run_exports_to_transformers_and_evaluates(tuned, tmp_path):
  from flan_jax import eval as eval_binary
  from flan_jax import export as export_binary
  directory, model_dir, _ = tuned
  out = str(tmp_path / "hf")
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
                          f"--gin.OUTPUT_DIR={out}", "--gin.EXPORT_DTYPE='float32'"])
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  p = checkpoints.open_pretrained(out)
  tokens = np.random.default_rng(2).integers(3, p.config.vocab_size, (2, 10))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(_logits(p.config, checkpoints.load_params(p), tokens), ref, atol=1e-4)
  # The eval binary follows the run's recorded model config and tokenizer: no model gin file needed.
  _run_ok(eval_binary, ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
                        "--gin.MIXTURE_OR_TASK_NAME=embedded_color_nli_scoring_t0", LENGTHS,
                        "--gin.evaluate.num_examples=24", "--gin.EVAL_BATCH_SIZE=8"])
  report = json.load(open(os.path.join(model_dir, "eval_embedded_color_nli_scoring_t0_validation_step2.json")))
  assert list(report["metrics"]) == ["embedded_color_nli_scoring_t0"]
  records = open(os.path.join(model_dir, "predictions_embedded_color_nli_scoring_t0_validation_step2.jsonl"))
  prompts = [json.loads(line)["prompt"] for line in records]
  assert len(prompts) == 8 and all("hypothesis" in p.lower() or "?" in p for p in prompts)


def test_resuming_with_another_vocabulary_is_one_line(tuned, capfd):
  from flan_jax import train
  _, model_dir, _ = tuned
  code, err = run_main(train, ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin", LENGTHS,
                               f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli",
                               "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8"], capfd)
  line = one_line(err)
  assert code == 2 and "was made with the vocabulary huggingface" in line, err


def test_eval_with_another_tokenizer_is_one_line(tuned, tmp_path, capfd):
  from flan_jax import eval as eval_binary
  _, model_dir, _ = tuned
  other = tmp_path / "other_tokenizer"
  other.mkdir()
  tiny_pretrained.train_tokenizer(vocab_size=300).save(str(other / "tokenizer.json"))
  code, err = run_main(eval_binary, [
      "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}", LENGTHS,
      "--gin.MIXTURE_OR_TASK_NAME=embedded_eval_nli", "--gin.run_vocabulary.vocabulary=@pretrained_vocabulary()",
      f"--gin.pretrained_vocabulary.path={other}"], capfd)
  line = one_line(err)
  assert code == 2 and "was made with the vocabulary huggingface (size 320" in line, err


# --- Bad input: one line each. ---------------------------------------------------------------------

def _copy(models, arch, tmp_path, edit=None):
  directory = str(tmp_path / f"{arch}_copy")
  shutil.copytree(models[arch][0], directory)
  if edit:
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    edit(config)
    json.dump(config, open(path, "w"))
  return directory


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(architectures=["GPT2LMHeadModel"]), "architecture ['GPT2LMHeadModel'] is not supported"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
     "rope scaling type 'yarn' is not supported"),
    (lambda c: c.update(intermediate_size=176), "wrong shape model.layers.0.mlp.down_proj.weight"),
    (lambda c: c.update(num_hidden_layers=3), "missing model.layers.2."),
])
def test_bad_pretrained_models_are_one_line_errors(models, tmp_path, edit, message):
  one_line_error(lambda: checkpoints.open_pretrained(_copy(models, "llama", tmp_path, edit)), re.escape(message))


def test_missing_shard_is_one_line_error(models, tmp_path):
  directory = _copy(models, "llama", tmp_path)
  os.remove(os.path.join(directory, next(f for f in os.listdir(directory) if f.startswith("model-00002-of-"))))
  with pytest.raises(UserError, match=r"shard model-00002-of-\d+.safetensors named in .* is missing"):
    checkpoints.open_pretrained(directory)


def test_bad_input_through_the_train_binary_is_one_line(models, tmp_path, capfd):
  from flan_jax import train
  common = ["--gin_file=runs/finetune_hf.gin", LENGTHS,
            "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8"]
  bad_arch = _copy(models, "llama", tmp_path, lambda c: c.update(architectures=["FalconForCausalLM"]))
  cases = [
      ([f"--gin.PRETRAINED={bad_arch}"], "architecture ['FalconForCausalLM'] is not supported"),
      # The tiny gin model is not the pretrained model's shape.
      ([f"--gin.PRETRAINED={models['llama'][0]}", "--gin_file=models/tiny.gin",
        "--gin.train.model_config=@ModelConfig()"], "the model config does not match"),
      # The run tokenizes with the byte vocabulary, the checkpoint has its own tokenizer.
      ([f"--gin.PRETRAINED={models['llama'][0]}", "--gin.run_vocabulary.vocabulary=None"],
       "was made with the vocabulary huggingface"),
  ]
  for k, (args, message) in enumerate(cases):
    code, err = run_main(train, [*common, f"--gin.MODEL_DIR={tmp_path / str(k)}", *args], capfd)
    line = one_line(err)
    assert code == 2 and message in line, (args, err)
    assert not os.path.exists(tmp_path / str(k) / "model_config.json")  # refused before writing anything


# --- A model directory without its tokenizer. --------------------------------------------------------

EVAL_ARGS = ["--gin_file=runs/eval.gin", "--gin.MIXTURE_OR_TASK_NAME=embedded_color_nli_scoring_t0", LENGTHS,
             "--gin.evaluate.num_examples=8", "--gin.EVAL_BATCH_SIZE=8"]
TRAIN_ARGS = ["--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli", LENGTHS, "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8",
              "--gin.ModelConfig.dtype='float32'", "--gin.ModelConfig.remat_policy='none'"]


def _without_tokenizer(models, tmp_path):
  """A copy of the tiny Llama with its weights and configs but no tokenizer.json."""
  directory = _copy(models, "llama", tmp_path)
  os.remove(os.path.join(directory, "tokenizer.json"))
  return directory


def test_a_model_directory_without_its_tokenizer_is_one_line(models, tmp_path, capfd):
  """Evaluated, or tuned with no vocabulary bound in gin, weights without tokenizer.json / tokenizer.model used to
  get the byte vocabulary silently (plausible scores); now one line names the directory and the files, exit 2,
  nothing written."""
  from flan_jax import eval as eval_binary
  from flan_jax import train
  bare = _without_tokenizer(models, tmp_path)
  message = f"{bare} has no tokenizer.json or tokenizer.model"
  cases = [
      (eval_binary, [*EVAL_ARGS, f"--gin.CHECKPOINT_PATH={bare}", f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'eval'}"]),
      (train, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={bare}", f"--gin.MODEL_DIR={tmp_path / 'a'}",
               *TRAIN_ARGS]),
      # The model from the directory, its vocabulary left to the default: this tuned with bytes.
      (train, ["--gin_file=runs/finetune.gin", f"--gin.INITIAL_CHECKPOINT_PATH={bare}",
               "--gin.train.model_config=@pretrained_model_config()", f"--gin.pretrained_model_config.path={bare}",
               f"--gin.MODEL_DIR={tmp_path / 'b'}", *TRAIN_ARGS]),
  ]
  for module, argv in cases:
    code, err = run_main(module, argv, capfd)
    line = one_line(err)
    assert code == 2 and message in line, (argv, err[-3000:])
    assert "run_vocabulary.vocabulary" in line  # and how to bind the vocabulary the weights were trained with
  assert not any(os.path.exists(tmp_path / name) for name in ("eval", "a", "b"))
  with pytest.raises(UserError, match=re.escape(message)):
    checkpoints.starting_vocabulary(bare)


def test_weights_without_a_tokenizer_run_with_a_vocabulary_bound_in_gin(models, tmp_path):
  """A vocabulary bound in gin is the user's choice: weights without tokenizer files are then evaluated and tuned
  with it (a tokenizer elsewhere, or @byte_vocabulary() for a flan_jax export trained with bytes)."""
  from flan_jax import eval as eval_binary
  from flan_jax import train
  bare, original = _without_tokenizer(models, tmp_path), models["llama"][0]
  assert checkpoints.starting_vocabulary(bare, missing_ok=True) is None
  out = tmp_path / "eval"
  _run_ok(eval_binary, [*EVAL_ARGS, f"--gin.CHECKPOINT_PATH={bare}", f"--gin.EVAL_OUTPUT_DIR={out}",
                        "--gin.run_vocabulary.vocabulary=@pretrained_vocabulary()",
                        f"--gin.pretrained_vocabulary.path={original}"])
  assert os.path.isfile(out / "eval_embedded_color_nli_scoring_t0_validation_step0.json")
  model_dir = str(tmp_path / "bytes")
  _run_ok(train, ["--gin_file=runs/finetune_hf.gin", f"--gin.PRETRAINED={bare}", f"--gin.MODEL_DIR={model_dir}",
                  "--gin.run_vocabulary.vocabulary=@byte_vocabulary()", *TRAIN_ARGS])
  assert tokenizers.describe(checkpoints.recorded_vocabulary(model_dir))["kind"] == "byte"


def test_pickled_weights_are_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(UserError, match="only pickled weights were found"):
    safetensors_io.SafetensorsDirectory(str(tmp_path))


def test_root_is_the_repository():
  assert os.path.isfile(os.path.join(ROOT, "gin", "runs", "finetune_hf.gin"))
