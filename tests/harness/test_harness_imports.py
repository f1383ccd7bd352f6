"""The lm-evaluation-harness backend never loads TensorFlow, seqio, tensorflow_datasets or t5: importing
flan_jax.harness, opening a Hugging Face directory and a flan_jax run directory through it, scoring and generating,
all in a fresh process (tests/test_layout.py holds the import graph to the same rule)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from flan_jax.checkpoints import restore, run_record, store
from flan_jax.model import partitioning
from flan_jax.text import vocabulary
from tests.conftest import ROOT, xla_flags
from tests.harness import test_harness as base

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

HEAVY = ("tensorflow", "seqio", "tensorflow_datasets", "t5")

# Opens each checkpoint (argv) as the backend does, scores a continuation and generates a few tokens with it, and
# prints what it opened and which of HEAVY the process has loaded.
_OPEN = f"""
import json, sys
from flan_jax.harness import FlanJaxLM, loading

class Request:
  def __init__(self, args):
    self.args = args

opened = []
for path in sys.argv[1:]:
  loaded = loading.open_checkpoint(path, dtype="float32")
  opened.append([loaded.kind, loaded.step, loaded.tokenizer.encode("The quick brown fox", add_special_tokens=False)])
lm = FlanJaxLM(checkpoint=sys.argv[-1], batch_size=8, max_length=32, dtype="float32")
[(score, _)] = lm.loglikelihood([Request(("The quick brown", " fox"))])
[text] = lm.generate_until([Request(("The quick", {{"until": ["<none>"], "max_gen_toks": 3}}))])
print(json.dumps({{"opened": opened, "scored": score < 0, "generated": isinstance(text, str),
                  "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def _save_run(model_dir: str, hf_dir: str) -> None:
  """A flan_jax run directory holding the Hugging Face model's weights as step 3, with its records."""
  pretrained = restore.open_pretrained(hf_dir)
  params = restore.load_params(pretrained, partitioning.make_mesh(devices=jax.devices()[:1]))
  mngr = store.manager(os.path.join(model_dir, "checkpoints"), async_save=False)
  with store.closing(mngr):
    store.save(mngr, 3, params, {"count": np.zeros((), np.int32)}, force=True)
  run_record.write_run_record(model_dir, pretrained.config, vocabulary.pretrained_vocabulary(hf_dir))


def test_the_backend_opens_scores_and_generates_without_tensorflow_or_seqio(tmp_path):
  hf_dir, run_dir = str(tmp_path / "llama"), str(tmp_path / "run")
  base.build(hf_dir, steps=1)
  _save_run(run_dir, hf_dir)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  out = subprocess.run([sys.executable, "-c", _OPEN, hf_dir, run_dir], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  (hf_kind, hf_step, hf_ids), (run_kind, run_step, run_ids) = result["opened"]
  assert (hf_kind, hf_step, run_kind, run_step) == ("huggingface", 0, "run", 3)
  assert run_ids == hf_ids and len(hf_ids) >= 4  # the run's recorded tokenizer is the directory's
  assert result["scored"] and result["generated"]
  assert result["heavy"] == []
