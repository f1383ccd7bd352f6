"""The input pipeline: seqio tasks and mixtures turned into the sharded batches the trainer and the
evaluator read.

- pipeline.py: task names checked, the run's features (vocabulary, example format) tokenized, packed or
  padded by the decoder feature converter, and `InputIterator`, whose position is saved with each checkpoint.
- accounting.py: what a run trained on, per task (configured rates against examples actually read).
- contamination.py: held-out tasks whose examples (13-gram overlap) appear in a tuning mixture.

Imports: seqio and TensorFlow, the leaves and flan_jax.text (the run's vocabulary and format); JAX only for
the process index and the cross-host tally. Never flan_jax.model (the trainer turns host-local rows into
global arrays: model.partitioning.to_global), nor
checkpoints, training, evaluation, reports, studies or cli: nothing here knows about runs on disk.
"""

from flan_jax.data import accounting, contamination, pipeline
from flan_jax.data.contamination import ContaminationError
from flan_jax.data.pipeline import InputIterator, get_dataset, task_names

__all__ = ["ContaminationError", "InputIterator", "accounting", "contamination", "get_dataset", "pipeline",
           "task_names"]
