"""lm-evaluation-harness on flan_jax's own model: `FlanJaxLM`, registered with lm-eval as the model "flan_jax".

- loading.py: what a checkpoint path gives the backend (a Hugging Face directory, a GGUF file or a flan_jax run):
  the model config, its parameters on the mesh and the Hugging Face tokenizer lm-eval's `hf` backend would use.
- scoring.py: the device work: batched, length-bucketed scoring of continuations and greedy KV-cache decoding.
- lm.py: FlanJaxLM, lm-eval's TemplateLM answering loglikelihood, loglikelihood_rolling and generate_until.
- __main__.py: `python -m flan_jax.harness --model_args checkpoint=PATH --tasks ...`, lm-eval's own command line.

Imports: the leaves, flan_jax.model, flan_jax.text's records and gguf_tokenizer, flan_jax.checkpoints' readers
(weights, run_record, paths), lm_eval and transformers (for the tokenizer). Never TensorFlow, seqio,
tensorflow_datasets or t5: nothing here tokenizes in TensorFlow, and tests/test_layout.py and
tests/harness/test_harness_imports.py hold it to that. Never data, training, evaluation, reports, studies, cli or
the commands. Importing the package registers "flan_jax" in lm-eval's model registry, as importing a folder
registers its gin configurables; nothing else.
"""

from flan_jax.harness import lm, loading, scoring
from flan_jax.harness.lm import FlanJaxLM
from flan_jax.harness.loading import Loaded, open_checkpoint

__all__ = ["FlanJaxLM", "Loaded", "lm", "loading", "open_checkpoint", "scoring"]
