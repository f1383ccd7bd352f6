"""The report's statistics: its settings, bootstrap CIs over examples, paired differences, the hierarchical bootstrap.

Every number is an `Estimate`: a mean over examples (a fraction), its bootstrap replicates and its number
of examples; `as_json` gives it in percent (points for a difference) with its percentile CI.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence
import zlib

import numpy as np

from flan_jax.errors import UserError
from flan_jax.reports.records import NORMALIZATIONS


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a report's numbers are computed: which score picks a scoring example's answer, and the bootstrap."""
  normalization: str = "none"
  bootstrap: int = 1000
  seed: int = 0
  confidence: float = 0.95


def check_settings(settings: Settings) -> None:
  """One-line UserErrors naming the flag to change."""
  if settings.normalization not in NORMALIZATIONS:
    raise UserError(f"unknown normalization {settings.normalization!r}; use one of {', '.join(NORMALIZATIONS)}")
  if settings.bootstrap < 0:
    raise UserError(f"--bootstrap {settings.bootstrap}: want a number of resamples >= 0 (0: no CIs)")
  if settings.seed < 0:
    raise UserError(f"--seed {settings.seed}: want an integer >= 0")
  if not 0 < settings.confidence < 1:
    raise UserError(f"--confidence {settings.confidence}: want a level between 0 and 1, e.g. 0.95")


@dataclasses.dataclass
class Estimate:
  """A mean over examples (a fraction), its bootstrap replicates and its number of examples."""
  value: float
  draws: np.ndarray
  n: int


# The bootstrap over examples.


def resample_means(values: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` bootstrap replicates of the mean of `values` (resampling len(values) examples with replacement).

  Drawing how often each distinct value is picked (a multinomial) has exactly the distribution of
  drawing the examples, and costs num x (distinct values) instead of num x (examples).
  """
  values = np.asarray(values, dtype=float)
  if not num or not len(values):
    return np.empty(0)
  levels, counts = np.unique(values, return_counts=True)
  picks = rng.multinomial(len(values), counts / len(values), size=num)
  return picks @ levels / len(values)


def percentile_ci(draws: np.ndarray, confidence: float) -> Optional[list[float]]:
  if not len(draws):
    return None
  tail = (1 - confidence) / 2 * 100
  return [float(v) for v in np.percentile(draws, [tail, 100 - tail])]


def rng_for(seed: int, key: str) -> np.random.Generator:
  """One generator per quantity, so a number's CI does not depend on what else is in the report."""
  return np.random.default_rng([seed, zlib.crc32(key.encode())])


def estimate(values, key: str, settings: Settings) -> Estimate:
  values = np.asarray(list(values), dtype=float)
  draws = resample_means(values, settings.bootstrap, rng_for(settings.seed, key))
  return Estimate(float(values.mean()), draws, len(values))


def average(estimates: Sequence[Estimate]) -> Optional[Estimate]:
  """The mean over datasets; each replicate averages the datasets' replicates (resampled within each)."""
  if not estimates:
    return None
  draws = np.mean(np.stack([e.draws for e in estimates]), axis=0)
  return Estimate(float(np.mean([e.value for e in estimates])), draws, sum(e.n for e in estimates))


def as_json(est: Optional[Estimate], settings: Settings, name: str = "accuracy") -> Optional[dict]:
  """In percent (points for a difference), with the percentile CI."""
  if est is None:
    return None
  ci = percentile_ci(est.draws, settings.confidence)
  return {name: 100 * est.value, "ci": None if ci is None else [100 * v for v in ci], "n": est.n}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], key: str,
                      settings: Settings) -> Optional[Estimate]:
  """Mean of a - b over the examples both have, resampled together (a paired bootstrap)."""
  ids = [i for i in a if i in b]
  return estimate([a[i] - b[i] for i in ids], key, settings) if ids else None


# The hierarchical bootstrap (the study report: seeds, then examples).


def hierarchical(estimates: Sequence[Estimate], key: str, settings: Settings) -> Estimate:
  """The mean over seeds of per-seed estimates, with replicates that resample the seeds, then the examples.

  Replicate b draws as many seeds as there are, with replacement, and averages, for each seed drawn, that seed's
  example-level replicate b (`Estimate.draws`: examples resampled within each dataset, then averaged over the
  cluster's datasets, as `average` does); a seed drawn twice counts its replicate twice. Each seed's
  replicates come from its own generator, so the example resamples of different seeds are independent. With one
  seed the replicates are that seed's, and the CI is its example-bootstrap CI. `n` is the examples over all seeds.
  """
  value = float(np.mean([e.value for e in estimates]))
  n = sum(e.n for e in estimates)
  draws = np.stack([e.draws for e in estimates])  # seeds x replicates
  if not draws.shape[1]:
    return Estimate(value, np.empty(0), n)
  replicates = np.arange(draws.shape[1])
  seeds = rng_for(settings.seed, key).integers(len(estimates), size=(len(replicates), len(estimates)))
  return Estimate(value, draws[seeds, replicates[:, None]].mean(axis=1), n)


def above_zero(est: Estimate) -> Optional[float]:
  """The fraction of bootstrap replicates above 0 (None without replicates)."""
  return float(np.mean(est.draws > 0)) if len(est.draws) else None
