"""The ordering verdict (mgm/significance.py) on constructed per-seed values, whose
means, standard deviations and standard errors are worked out by hand."""
import pytest

from mgm import significance
from mgm.significance import HOLDS, NOISE, ONE_SEED, REVERSED


def stats(values):
  mean, std = significance.mean_std(values)
  return mean, std, len(values)


# better arm, worse arm (lower is better); by hand: both std 0.1, n 3, so
# SE = sqrt(0.01 / 3 + 0.01 / 3) = 0.0816 and 2 SE = 0.163
SEPARATED = ([2.0, 2.1, 2.2], [2.5, 2.6, 2.7])      # difference 0.5: > 2 SE
CLOSE = ([2.0, 2.1, 2.2], [2.05, 2.15, 2.25])      # difference 0.05: < 2 SE


@pytest.mark.parametrize("better, worse, expected", [
    (SEPARATED[0], SEPARATED[1], HOLDS),
    (SEPARATED[1], SEPARATED[0], REVERSED),          # the claim swapped
    ([2.0, 2.1, 2.2], [2.0, 2.1, 2.2], NOISE),       # identical arms
    ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0], NOISE),       # identical, no spread (SE 0)
    (CLOSE[0], CLOSE[1], NOISE),
    (CLOSE[1], CLOSE[0], NOISE),
    ([2.0], [2.5], ONE_SEED),                        # no spread to test against
    ([2.0, 2.1], [2.5], ONE_SEED),
])
def test_verdict_on_constructed_cases(better, worse, expected):
  assert significance.verdict(stats(better), stats(worse)) == expected


def test_two_standard_errors_is_the_line():
  """Differences just either side of 2 SE: SE = sqrt(2 x 0.1^2 / 3) = 0.08165."""
  better = (2.0, 0.1, 3)
  assert significance.standard_error(better, (2.0, 0.1, 3)) == pytest.approx(0.0816497, rel=1e-5)
  assert significance.verdict(better, (2.0 + 0.1633, 0.1, 3)) == HOLDS
  assert significance.verdict(better, (2.0 + 0.1632, 0.1, 3)) == NOISE
  assert significance.verdict(better, (2.0 - 0.1633, 0.1, 3)) == REVERSED
  # unequal spreads and seeds: SE = sqrt(0.2^2 / 4 + 0.05^2 / 2) = 0.10607
  assert significance.verdict((1.0, 0.2, 4), (1.0 + 0.2122, 0.05, 2)) == HOLDS
  assert significance.verdict((1.0, 0.2, 4), (1.0 + 0.2120, 0.05, 2)) == NOISE


def test_mean_std_is_the_sample_std():
  mean, std = significance.mean_std([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3)
  assert std == pytest.approx(((4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) ** 0.5 / 2 ** 0.5)
  assert significance.mean_std([3.0]) == (3.0, None)
  with pytest.raises(ValueError):
    significance.mean_std([])
