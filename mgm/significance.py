"""Seeds -> evidence: per-arm mean and sample standard deviation over seeds,
and the verdict on an ordering the paper reports.

An ordering (better, worse) compares the arms' mean metric (lower is better).
With d = mean(worse) - mean(better) and the standard error of that difference
SE = sqrt(s_b^2 / n_b + s_w^2 / n_w) (s: sample standard deviation, n: seeds),
the ordering

  holds          when d >= 2 SE and d > 0 (ours agrees, beyond the seeds' noise),
  reversed       when -d >= 2 SE and d < 0,
  within noise   when |d| < 2 SE (or d = 0),
  one seed: no test   when either arm has a single seed (no spread to judge by).
"""
import math

import numpy as np

HOLDS, REVERSED, NOISE, ONE_SEED = "holds", "reversed", "within noise", "one seed: no test"
VERDICTS = (HOLDS, REVERSED, NOISE, ONE_SEED)


def mean_std(values) -> tuple[float, float | None]:
  """(mean, sample standard deviation, ddof=1) of per-seed values; the std is
  None for a single value. ValueError on no values."""
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    raise ValueError("mean_std: no values")
  std = float(np.std(values, ddof=1)) if values.size > 1 else None
  return float(np.mean(values)), std


def verdict(better: tuple[float, float | None, int], worse: tuple[float, float | None, int]
            ) -> str:
  """One of VERDICTS for the claim `better` < `worse`; each is (mean, std, seeds)."""
  se = standard_error(better, worse)
  if se is None:
    return ONE_SEED
  difference = worse[0] - better[0]
  if difference == 0 or abs(difference) < 2 * se:
    return NOISE
  return HOLDS if difference > 0 else REVERSED


def standard_error(better, worse) -> float | None:
  """SE of the difference of two (mean, std, seeds); None with a single seed."""
  if better[2] < 2 or worse[2] < 2 or better[1] is None or worse[1] is None:
    return None
  return math.sqrt(better[1] ** 2 / better[2] + worse[1] ** 2 / worse[2])
