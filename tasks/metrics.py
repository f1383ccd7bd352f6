"""Metric functions for tasks whose target is one reference string (wrapping t5's metrics)."""

from t5.evaluation import metrics as t5_metrics

accuracy = t5_metrics.accuracy
bleu = t5_metrics.bleu
rouge = t5_metrics.rouge


def squad(targets, predictions):
  """Exact match and token F1 (SQuAD normalisation) against the single reference answer."""
  return t5_metrics.squad([[t] for t in targets], predictions)


CLASSIFICATION = (accuracy,)
QA = (squad,)
GENERATION = (bleu, rouge)
SUMMARY = (rouge,)
TRANSLATION = (bleu,)
