"""Tests for flan_jax/model/lora.py and checkpoints/ (run_record, restore, peft): LoRA on a frozen base, int8
base, adapter-only checkpoints, merged and PEFT export."""

import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
from flan_jax.model import lora as lora_lib
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig, Transformer
from flan_jax.training import optimizers
from flan_jax.training import step as step_lib
import flan_tasks  # noqa: F401
from tests import tiny_pretrained
from tests.checkpoints.test_pretrained import _run_ok
from tests.checks import assert_trees_close, assert_trees_equal, one_line
from tests.conftest import TINY

LENGTHS = {"inputs": 96, "targets": 24}
LORA = lora_lib.LoraConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def data():
  ds = data_lib.get_dataset("embedded_no_sentiment", LENGTHS, "train", 8, seed=3)
  return [b for _, b in zip(range(2), ds.as_numpy_iterator())]


@pytest.fixture(scope="module")
def base():
  return nn.unbox(Transformer(TINY).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def run(config, lora, base, data, mesh_shape=(1, 1, 1), num_microbatches=1, steps=None):
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh, rules = partitioning.make_mesh(*mesh_shape, devices=devices), partitioning.axis_rules()
  schedule = optimizers.make_schedule(100, learning_rate=1e-2)
  tx = optimizers.make_optimizer(schedule)
  s = step_lib.setup(config, mesh, rules, tx, sum(LENGTHS.values()), lora)
  fn = step_lib.compile_train_step(s, tx, schedule, num_microbatches=num_microbatches)
  state = s.init(jax.random.key(1))
  frozen = None
  if lora is not None:
    frozen = jax.device_put(lora_lib.freeze(base, lora), s.frozen_shardings)
  else:
    state = state.replace(params=jax.device_put(jax.tree.map(jnp.copy, base), s.state_shardings.params))
  losses = []
  for b in data[:steps]:
    state, metrics = fn(state, partitioning.to_global(b, s.batch_sharding), frozen)
    losses.append(float(metrics["loss"]))
  return s, state, losses


@pytest.fixture(scope="module")
def reference(base, data):
  return run(TINY, LORA, base, data)


def test_step_zero_loss_is_the_base_models_and_only_adapters_train(reference, base, data):
  s, state, losses = reference
  _, _, full_losses = run(TINY, None, base, data, steps=1)
  assert losses[0] == full_losses[0]  # B starts at zero: the adapted model is the base
  assert np.any(np.asarray(state.params["layers"]["attn"]["wq_lora_b"]) != 0)  # the adapters did train
  names = {"/".join(p) for p in __import__("flax").traverse_util.flatten_dict(state.params)}
  assert names and all(n.endswith(("_lora_a", "_lora_b")) for n in names)
  assert len(names) == 2 * 7 * 1  # q, k, v, o, gate, up, down: A and B each
  adam = state.opt_state[1][0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(state.params)
  assert lora_lib.count(state.params) < 0.2 * TINY.num_params()


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_lora_matches_one_device(reference, base, data, mesh_shape):
  _, ref_state, ref_losses = reference
  s, state, losses = run(TINY, LORA, base, data, mesh_shape)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  a = state.params["layers"]["mlp"]["w_up_lora_a"]
  # A sharded mesh sums gradients in another order than one device, and Adam divides by sqrt(v): where v is
  # tiny, a last-bit gradient difference moves the weight by ~1e-5 (seen on the 2x2x2 mesh: 1 of 512 values).
  np.testing.assert_allclose(a, ref_state.params["layers"]["mlp"]["w_up_lora_a"], rtol=1e-4, atol=1e-5)
  # The frozen base is placed by the same rules as in full fine-tuning; the adapters follow them too.
  assert s.frozen_shardings["layers"]["mlp"]["w_up"].spec == partitioning.sharded_param_structs(
      Transformer(TINY), s.mesh, s.rules)["layers"]["mlp"]["w_up"].sharding.spec
  assert a.addressable_shards[0].data.shape[1] == TINY.d_model // mesh_shape[1]


def test_unrolled_remat_and_microbatches_match(reference, base, data):
  _, ref_state, ref_losses = reference
  config = ModelConfig(**{**TINY.__dict__, "scan_layers": False, "remat_policy": "full"})
  _, state, losses = run(config, LORA, base, data, num_microbatches=4)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert_trees_close(state.params, ref_state.params, rtol=0, atol=1e-5)


def test_dropout_on_the_adapter_input_is_seeded(base, data):
  lora = lora_lib.LoraConfig(rank=4, dropout=0.5)
  mesh, rules = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]), partitioning.axis_rules()
  schedule = optimizers.make_schedule(10, learning_rate=1e-2)
  tx = optimizers.make_optimizer(schedule)
  s = step_lib.setup(TINY, mesh, rules, tx, sum(LENGTHS.values()), lora)
  frozen = lora_lib.freeze(base, lora)
  batch = partitioning.to_global(data[0], s.batch_sharding)
  seeded = [step_lib.compile_train_step(s, tx, schedule, dropout_seed=seed) for seed in (7, 7, 8)]
  results = [fn(s.init(jax.random.key(1)), batch, frozen)[0].params for fn in seeded]
  leaf = lambda p: np.asarray(p["layers"]["attn"]["wq_lora_b"])
  np.testing.assert_array_equal(leaf(results[0]), leaf(results[1]))
  assert not np.array_equal(leaf(results[0]), leaf(results[2]))


@pytest.mark.parametrize("kind, max_error, max_bytes", [("int8", 0.01, 0.3), ("nf4", 0.1, 0.2)])
def test_quantized_base_bounds_the_logit_error_and_saves_memory(base, kind, max_error, max_bytes):
  lora = lora_lib.LoraConfig(rank=4, base_quantization=kind)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 24)))
  ref = Transformer(TINY).apply({"params": base}, tokens)
  frozen = lora_lib.freeze(base, lora)
  adapters_ = lora_lib.split(nn.unbox(Transformer(TINY, lora).init(jax.random.key(1), tokens)["params"]))[0]
  out = Transformer(TINY, lora).apply({"params": lora_lib.join(frozen, adapters_)}, tokens)
  error = float(jnp.max(jnp.abs(out - ref)))
  assert 0 < error < max_error * float(jnp.max(jnp.abs(ref))), error
  kernels = lambda tree: sum(x.nbytes for p, x in __import__("flax").traverse_util.flatten_dict(tree).items()
                             if p[-1] in lora_lib.HF_MODULES or p[-1].endswith(lora_lib.SCALE_SUFFIX))
  # 1 (int8) or 1/2 (nf4) bytes per value, plus one float32 scale per 16 values (head_dim 16), against 4
  assert kernels(frozen) < max_bytes * kernels(base)
  # Merging dequantizes: the merged plain model computes what the adapted model on the int8 base does.
  merged = lora_lib.merge(frozen, adapters_, lora)
  np.testing.assert_allclose(Transformer(TINY).apply({"params": merged}, tokens), out, atol=1e-5)


def test_bfloat16_base_halves_the_base_and_starts_at_its_loss(base, data):
  """LoraConfig.base_dtype='bfloat16': the frozen base in bf16 (and a quantized base's embeddings and norms),
  the adapters and their optimizer state in float32; step 0's loss is the plain model's on the rounded base."""
  lora = lora_lib.LoraConfig(rank=4, alpha=8.0, base_dtype="bfloat16")
  s, state, losses = run(TINY, lora, base, data)
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), base)
  _, _, full_losses = run(TINY, None, rounded, data, steps=1)
  assert losses[0] == full_losses[0]
  assert {x.dtype for x in jax.tree.leaves(s.frozen_shapes)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  mesh, rules = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]), partitioning.axis_rules()
  tx = optimizers.make_optimizer(optimizers.make_schedule(10))
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  for config in (lora, lora_lib.LoraConfig(rank=4, base_quantization="nf4", base_dtype="bfloat16")):
    frozen_shapes = step_lib.setup(TINY, mesh, rules, tx, 16, config).frozen_shapes
    assert nbytes(frozen_shapes) == lora_lib.train_state_bytes(TINY, config)["base"]
    scales = [x for p, x in __import__("flax").traverse_util.flatten_dict(frozen_shapes).items()
              if p[-1].endswith(lora_lib.SCALE_SUFFIX)]
    assert all(x.dtype == jnp.float32 for x in scales) and len(scales) == (7 if config.quantized else 0)
  assert lora_lib.train_state_bytes(TINY, lora)["base"] * 2 == lora_lib.train_state_bytes(TINY, LORA)["base"]
  # Merging adds the update in float32 to the bf16 kernel, not rounded back to bf16.
  merged = lora_lib.merge(lora_lib.freeze(base, lora), state.params, lora)
  wq = merged["layers"]["attn"]["wq"]
  assert wq.dtype == jnp.float32 and not np.array_equal(wq, wq.astype(jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("kind", ["int8", "nf4", "bfloat16"])
def test_converted_base_trains_as_its_float_values_without_holding_them(base, data, kind):
  """The adapters' gradient on a quantized or bf16 base (float32 compute) equals their gradient on a float32
  base of its values, and for a quantized base the compiled step's scratch memory does not grow by the float32
  weights (they are dequantized again for the backward pass, not kept from the forward pass). XLA's CPU
  backend converts a bf16 base to float32 whole before the layer loop, so its scratch is not bounded here."""
  int8 = lora_lib.LoraConfig(rank=4, alpha=8.0, **({"base_dtype": kind} if kind == "bfloat16" else
                                                   {"base_quantization": kind}))
  frozen8 = lora_lib.freeze(base, int8)
  dequantized = jax.tree.map(lambda x: x.astype(jnp.float32), lora_lib.merge(frozen8, {}, int8))
  tokens = jnp.zeros((1, 8), jnp.int32)
  adapters_ = lora_lib.split(nn.unbox(Transformer(TINY, LORA).init(jax.random.key(1), tokens)["params"]))[0]
  keys = iter(jax.random.split(jax.random.key(2), 100))  # B nonzero, so that A has a gradient too
  adapters_ = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), adapters_)
  batch = {k: jnp.asarray(v) for k, v in data[0].items()}
  grads = [jax.jit(jax.grad(lambda a, f, m=m: step_lib.loss_fn(a, batch, model=m, z_loss=0.0, dropout_rng=None,
                                                               frozen=f)[0]))(adapters_, f)
           for m, f in ((Transformer(TINY, int8), frozen8), (Transformer(TINY, LORA), dequantized))]
  assert jax.tree.structure(grads[0]) == jax.tree.structure(grads[1]) and jax.tree.leaves(grads[1])
  for x, y in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
    assert float(jnp.max(jnp.abs(x))) > 0
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(y))))
  if kind == "bfloat16":  # its bytes: test_bfloat16_base_halves_the_base_and_starts_at_its_loss
    return

  mesh, rules = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]), partitioning.axis_rules()
  schedule = optimizers.make_schedule(10)
  tx = optimizers.make_optimizer(schedule)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), data[0])
  scratch, base_bytes = {}, {}
  for lora in (LORA, int8):
    s = step_lib.setup(TINY, mesh, rules, tx, sum(LENGTHS.values()), lora)
    step = jax.jit(lambda st, b, f, s=s: step_lib.train_step(st, b, f, model=s.model, tx=tx, schedule=schedule))
    with partitioning.activate(mesh, rules):
      compiled = step.lower(s.state_shapes, batch, s.frozen_shapes).compile()
    name = "none" if lora is LORA else kind
    scratch[name] = compiled.memory_analysis().temp_size_in_bytes
    base_bytes[name] = lora_lib.train_state_bytes(TINY, lora)["base"]
    assert base_bytes[name] == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(s.frozen_shapes))
  # Keeping every layer's dequantized weights would add about the float base's size (measured: +100% for int8).
  assert scratch[kind] < scratch["none"] + 0.2 * base_bytes["none"], (scratch, base_bytes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "LoraConfig.rank=0"),
    (dict(targets=["q", "attention"]), "names \\['attention'\\]"),
    (dict(base_quantization="nf3"), "base_quantization='nf3'"),
    (dict(base_dtype="int8"), "base_dtype='int8'"),
    (dict(base_quantization="nf4", config=dict(d_ff=191)), "w_gate's is 191, odd; use 'int8'"),
    (dict(rank=65), "larger than the wq projection"),
])
def test_bad_lora_settings_are_one_line(kwargs, message):
  config = ModelConfig(**{**TINY.__dict__, **kwargs.pop("config", {})})
  with pytest.raises(UserError, match=message):
    lora_lib.check(lora_lib.LoraConfig(**kwargs), config)


# --- Through the binaries: a LoRA run on an imported Hugging Face model, resumed, evaluated, exported. ---

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
HF_LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"


def _train(hf_dir, model_dir, *extra):
  from flan_jax import train
  _run_ok(train, ["--gin_file=runs/finetune_hf.gin", "--gin_file=runs/finetune_lora.gin", f"--gin.PRETRAINED={hf_dir}",
                  f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli", HF_LENGTHS,
                  "--gin.BATCH_SIZE=8", "--gin.LORA_RANK=4", "--gin.LEARNING_RATE=1e-2",
                  "--gin.make_schedule.warmup_steps=0", "--gin.make_schedule.schedule='constant'",
                  "--gin.ModelConfig.dtype='float32'",
                  "--gin.ModelConfig.remat_policy='none'", "--gin.CHECKPOINT_PERIOD=2", *extra])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  hf_dir = str(root / "base")
  hf = tiny_pretrained.build("llama", hf_dir)
  model_dir = str(root / "run")
  _train(hf_dir, model_dir, "--gin.TRAIN_STEPS=2")
  _train(hf_dir, model_dir, "--gin.TRAIN_STEPS=4")  # resumed from step 2
  straight = str(root / "straight")
  _train(hf_dir, straight, "--gin.TRAIN_STEPS=4")
  return hf_dir, hf, model_dir, straight


def test_checkpoints_hold_adapters_and_resume_exactly(lora_run):
  hf_dir, _, model_dir, straight = lora_run
  record = json.load(open(os.path.join(model_dir, checkpoints.run_record.LORA_BASE)))
  assert record["path"] == os.path.abspath(hf_dir) and len(record["hash"]) == 64 and record["lora"]["rank"] == 4
  mesh, rules = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]), partitioning.axis_rules()
  step, resumed, _, _ = checkpoints.restore_adapters(model_dir, mesh, rules)
  _, once, _, _ = checkpoints.restore_adapters(straight, mesh, rules)
  assert step == 4
  assert_trees_equal(resumed, once)
  # The checkpoint stores the adapters alone (orbax's record of the arrays it wrote; its file sizes vary).
  for item in ("params", "opt_state"):
    with open(os.path.join(model_dir, "checkpoints", "4", item, "_METADATA")) as f:
      stored = [v["key_metadata"][-1]["key"] for v in json.load(f)["tree_metadata"].values()
                if v["value_metadata"].get("write_shape")]  # arrays, not optax's step counters
    assert len(stored) == (14 if item == "params" else 28), (item, stored)
    assert all(name.endswith(("_lora_a", "_lora_b")) for name in stored), stored


@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory):
  """The LoRA run exported merged into its base, in float32 (a Hugging Face directory)."""
  from flan_jax import export as export_binary
  out = str(tmp_path_factory.mktemp("lora_merged") / "merged")
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={lora_run[2]}",
                          f"--gin.OUTPUT_DIR={out}", "--gin.EXPORT_DTYPE='float32'"])
  return out


def test_merged_export_matches_the_adapter_model_in_transformers(lora_run, merged, tmp_path):
  from flan_jax import checkpoints
  from flan_jax import export as export_binary
  hf_dir, _, model_dir, _ = lora_run
  out = merged
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  mesh, rules = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]), partitioning.axis_rules()
  config = checkpoints.pretrained_model_config(hf_dir)
  _, trained, record, lora = checkpoints.restore_adapters(model_dir, mesh, rules)
  frozen = lora_lib.freeze(checkpoints.load_params(checkpoints.open_pretrained(hf_dir)), lora)
  tokens = np.random.default_rng(2).integers(3, config.vocab_size, (2, 12))
  ours = np.asarray(Transformer(config, lora).apply({"params": lora_lib.join(frozen, trained)}, tokens))
  base = np.asarray(Transformer(config).apply({"params": checkpoints.load_params(checkpoints.open_pretrained(hf_dir))},
                                              tokens))
  assert np.max(np.abs(ours - base)) > 1e-3  # the adapters changed the model
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  # GGUF export merges the same way: flan_jax's GGUF import reads back the adapted model.
  gguf_dir = tmp_path / "gguf"
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
                          f"--gin.OUTPUT_DIR={gguf_dir}", "--gin.EXPORT_FORMAT='gguf'", "--gin.EXPORT_DTYPE='float32'"])
  (name,) = os.listdir(gguf_dir)
  read_back = checkpoints.open_pretrained(str(gguf_dir / name))
  np.testing.assert_allclose(
      Transformer(read_back.config).apply({"params": checkpoints.load_params(read_back)}, tokens), ours, atol=1e-4)


def test_peft_adapter_export_loads_onto_the_base(lora_run, merged, tmp_path):
  peft = pytest.importorskip("peft")
  from flan_jax import export as export_binary
  hf_dir, hf, model_dir, _ = lora_run
  out = str(tmp_path / "adapter")
  _run_ok(export_binary, ["--gin_file=runs/export.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
                          f"--gin.OUTPUT_DIR={out}", "--gin.EXPORT_ADAPTER=True"])
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
  merged_dir = merged
  base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  with_adapter = peft.PeftModel.from_pretrained(base, out).eval()
  merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
  tokens = torch.tensor(np.random.default_rng(3).integers(3, hf.config.vocab_size, (2, 12)))
  with torch.no_grad():
    np.testing.assert_allclose(with_adapter(tokens).logits.numpy(), merged(tokens).logits.numpy(), atol=1e-4)


def test_lora_eval_scores_the_merged_model(lora_run, merged, tmp_path):
  """The eval of a LoRA run (base + adapters) gives the scores of its merged export's eval, and not the base's."""
  from flan_jax import eval as eval_binary
  hf_dir, _, model_dir, _ = lora_run
  task = "embedded_color_nli_scoring_t0"
  outputs = {"lora": model_dir, "merged": str(tmp_path / "merged"), "base": str(tmp_path / "base")}
  for name, checkpoint in (("lora", model_dir), ("merged", merged), ("base", hf_dir)):
    _run_ok(eval_binary, ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={checkpoint}",
                          f"--gin.EVAL_OUTPUT_DIR={outputs[name]}", f"--gin.MIXTURE_OR_TASK_NAME={task}", HF_LENGTHS,
                          "--gin.evaluate.num_examples=8", "--gin.EVAL_BATCH_SIZE=8"])
  reports, scores = {}, {}
  for name, directory in outputs.items():
    (report,) = glob.glob(os.path.join(directory, f"eval_{task}_validation_step*.json"))
    (records,) = glob.glob(os.path.join(directory, f"predictions_{task}_validation_step*.jsonl"))
    reports[name] = json.load(open(report))["metrics"][task]
    scores[name] = {r["example_id"]: r["scores"]["none"] for r in map(json.loads, open(records))}
  assert reports["lora"] == reports["merged"] and scores["lora"]
  assert scores["lora"].keys() == scores["merged"].keys() == scores["base"].keys()
  flat = {name: np.concatenate([by_example[k] for k in sorted(by_example)]) for name, by_example in scores.items()}
  np.testing.assert_allclose(flat["lora"], flat["merged"], atol=1e-4)
  assert np.max(np.abs(flat["lora"] - flat["base"])) > 1e-3  # the adapters were applied


class _Request:  # what lm-eval hands a model: a request's arguments
  def __init__(self, args):
    self.args = args


def test_the_harness_scores_a_lora_run_as_the_hf_backend_scores_its_merged_export(lora_run, merged):
  """lm-eval's flan_jax model on the LoRA run itself (its adapters merged into its base as it loads) and lm-eval's
  own `hf` backend on the run's merged export: the same log-likelihoods, greedy flags and generations."""
  from lm_eval.api.registry import get_model

  from flan_jax.harness import FlanJaxLM
  hf_dir, _, model_dir, _ = lora_run
  args = dict(batch_size=4, dtype="float32", max_length=64, add_bos_token=False)
  ours, base = FlanJaxLM(checkpoint=model_dir, **args), FlanJaxLM(checkpoint=hf_dir, **args)
  theirs = get_model("hf")(pretrained=merged, device="cpu", **args)
  assert ours.loaded.kind == "run" and ours.loaded.step == 4
  text = tiny_pretrained.TEXT
  requests = [_Request((t[:n], t[n:n + 12])) for t in text[:4] for n in (10, 25)]
  mine, hf, untrained = (lm.loglikelihood(requests) for lm in (ours, theirs, base))
  np.testing.assert_allclose([ll for ll, _ in mine], [ll for ll, _ in hf], rtol=0, atol=1e-4)
  assert [g for _, g in mine] == [g for _, g in hf]
  assert max(abs(a - b) for (a, _), (b, _) in zip(mine, untrained, strict=True)) > 1e-2  # the adapters count
  prompts = [_Request((t[:20], {"until": ["<none>"], "max_gen_toks": 6})) for t in text[:4]]
  assert ours.generate_until(prompts) == theirs.generate_until(prompts)


def test_lora_base_errors_are_one_line(lora_run, tmp_path, capfd):
  import gin

  from flan_jax import cli, train
  hf_dir, _, model_dir, _ = lora_run
  other = str(tmp_path / "other")
  tiny_pretrained.build("llama", other, seed=1)
  capfd.readouterr()  # transformers' progress bars while saving it
  cases = [
      (["--gin_file=runs/finetune_hf.gin", "--gin_file=runs/finetune_lora.gin", f"--gin.PRETRAINED={other}",
        f"--gin.MODEL_DIR={model_dir}", "--gin.LORA_RANK=4", "--gin.TRAIN_STEPS=6"], "is not the one"),
      (["--gin_file=runs/finetune_hf.gin", "--gin_file=runs/finetune_lora.gin", f"--gin.PRETRAINED={hf_dir}",
        f"--gin.MODEL_DIR={model_dir}", "--gin.LORA_RANK=8", "--gin.TRAIN_STEPS=6"], "other LoRA settings"),
      (["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune_lora.gin",
        f"--gin.MODEL_DIR={tmp_path / 'scratch'}"], "INITIAL_CHECKPOINT_PATH"),
  ]
  before = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
  for argv, message in cases:
    gin.clear_config()
    with pytest.raises(SystemExit) as exit_info:
      cli.run(train.main, argv + ["--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli", HF_LENGTHS, "--gin.BATCH_SIZE=8"])
    gin.clear_config()
    assert exit_info.value.code == 2
    assert message in one_line(capfd.readouterr().err)
  assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == before
