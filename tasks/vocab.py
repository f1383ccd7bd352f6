"""The vocabulary every flan_jax task tokenizes with: the one the run's gin config chooses.

Tasks are registered at import, before gin is parsed, so their features hold a
`flan_jax.text.vocabulary.RunVocabulary`, which asks `run_vocabulary()` for the run's choice each time
it tokenizes: `run_vocabulary.vocabulary = @pretrained_vocabulary()` in a run's gin file (see
gin/runs/finetune_hf.gin), else the vocabulary of the open `flan_jax.text.run_text(...)` (the trainer's
run, or the checkpoint an eval follows), else seqio's byte vocabulary, which needs no file and no download.
"""

import seqio

from flan_jax.text.vocabulary import RunVocabulary


def vocabulary() -> seqio.Vocabulary:
  return RunVocabulary()


def output_features() -> dict[str, seqio.Feature]:
  vocab = vocabulary()
  return {
      "inputs": seqio.Feature(vocab, add_eos=True, required=False),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
