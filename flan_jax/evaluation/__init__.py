"""Zero-shot evaluation: a checkpoint's scores on seqio eval tasks, as the FLAN paper reports them.

- evaluator.py: `evaluate` (the eval binary's gin entry point): restores each checkpoint onto the mesh,
  scores the options of multiple-choice tasks (lm-evaluation-harness's acc / acc_norm) and decodes the
  generative ones, and writes metrics and predictions whole.
- batches.py: `BatchRunner`, the eval's device work: global batches through a jitted function, each cut to the
  length bucket its rows need (the configured TASK_FEATURE_LENGTHS are a ceiling).
- predictions.py: one record per eval example, in the schema flan_jax.reports reads.

Imports: the model, text, data, checkpoints and reports folders and the leaves. Never training,
studies, cli or the commands.
"""

from flan_jax.evaluation import evaluator, predictions
from flan_jax.evaluation.evaluator import evaluate

__all__ = ["evaluate", "evaluator", "predictions"]
