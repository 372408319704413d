"""Compute-scaling fits: L(C) = E + A * C**(-alpha) per arm, bootstrap intervals,
and the budget at which one fitted curve goes below another (the crossover).

C is training FLOPs, L eval bits/byte. The fit minimises squared residuals in
log space, sum_i (log L_i - log L(C_i))**2 (scipy.optimize.least_squares, bounds
floor <= E < min L, A > 0, 0 < alpha <= ALPHA_MAX; floor 0 unless given, e.g. a
synthetic corpus's entropy: no model goes below it), internally with C divided by the
geometric mean of the budgets so that A stays well-conditioned; `Fit.a` is in
the formula's own units (C in FLOPs). Several points at one budget (seeds) are
allowed. Degenerate inputs (fewer than MIN_BUDGETS distinct budgets, a loss
that does not fall with compute, non-finite or non-positive values) raise
DegenerateFit with the reason; nothing is fitted.

Bootstrap: with repeats at every budget, cases are resampled within each budget
(seeds); otherwise residuals (log space, inflated by sqrt(n / (n - 3)) for the
three fitted parameters) are resampled onto the fitted curve. Intervals are
percentiles of the replicates.
"""
import dataclasses

import numpy as np
from scipy import optimize

MIN_BUDGETS = 3      # three parameters need at least three distinct budgets
ALPHA_MAX = 3.0
N_PARAMS = 3


class DegenerateFit(ValueError):
  """The points cannot determine E, A and alpha; the message says why."""


@dataclasses.dataclass(frozen=True)
class Fit:
  e: float           # irreducible loss (bits/byte): the curve's limit at infinite compute
  a: float           # scale, C in FLOPs
  alpha: float       # exponent
  rms: float         # root-mean-square log-space residual of the points

  def __call__(self, c):
    """L(c) for training FLOPs c (scalar or array)."""
    return self.e + self.a * np.asarray(c, dtype=float) ** (-self.alpha)


def check_points(c, loss, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """(C, L) as float arrays sorted by C; DegenerateFit when they cannot be fitted."""
  c, loss = np.asarray(c, dtype=float).ravel(), np.asarray(loss, dtype=float).ravel()
  if c.shape != loss.shape:
    raise DegenerateFit(f"{c.size} budgets but {loss.size} losses")
  if not (np.all(np.isfinite(c)) and np.all(np.isfinite(loss))):
    raise DegenerateFit("a budget or loss is not finite")
  if np.any(c <= 0) or np.any(loss <= 0):
    raise DegenerateFit("budgets and losses must be > 0 (the fit is in log space)")
  if not loss.min() > floor:
    raise DegenerateFit(f"a loss ({loss.min():.4g}) is not above the floor E >= {floor:.4g}")
  budgets = np.unique(c)
  if budgets.size < MIN_BUDGETS:
    raise DegenerateFit(f"{budgets.size} distinct budget(s); a fit of E, A and alpha needs "
                        f"at least {MIN_BUDGETS}")
  means = np.array([loss[c == b].mean() for b in budgets])
  if not means[-1] < means[0]:
    raise DegenerateFit(f"the loss does not fall with compute ({means[0]:.4g} at "
                        f"{budgets[0]:.3g} FLOPs, {means[-1]:.4g} at {budgets[-1]:.3g})")
  order = np.argsort(c, kind="stable")
  return c[order], loss[order]


def _solve(x, log_loss, e_range, starts, first: bool = False):
  """Best least_squares solution over `starts` of (E, log A', alpha) for
  log L = log(E + A' x**-alpha) (with `first`, the first that converges); None
  if none converged."""
  def residuals(p):
    return log_loss - np.log(p[0] + np.exp(p[1]) * x ** (-p[2]))
  lower, upper = [e_range[0], -50.0, 1e-4], [e_range[1], 50.0, ALPHA_MAX]
  best = None
  for start in starts:
    start = np.clip(start, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
    result = optimize.least_squares(residuals, start, bounds=(lower, upper), method="trf")
    if result.success and np.all(np.isfinite(result.x)) and (
        best is None or result.cost < best.cost):
      best = result
      if first:
        break
  return best


def _starts(loss, floor: float):
  """Initial (E, log A', alpha) spread over the plausible range."""
  low = loss.min()
  return [np.array([e, np.log(max(loss.max() - e, 1e-6)), alpha])
          for e in (floor, (floor + low) / 2, floor + 0.9 * (low - floor))
          for alpha in (0.1, 0.5, 1.0)]


def fit(c, loss, floor: float = 0.0, starts=None) -> Fit:
  """Fit L(C) = E + A C^-alpha to points (C_i FLOPs, L_i bits/byte), E >= `floor`;
  DegenerateFit if impossible. `starts` (refit_start's): try these in turn,
  keeping the first that converges, instead of the best of generic starts."""
  c, loss = check_points(c, loss, floor)
  scale = np.exp(np.log(c).mean())     # C / scale is of order 1
  x, log_loss = c / scale, np.log(loss)
  e_range = (floor, floor + (loss.min() - floor) * (1 - 1e-9))
  best = (_solve(x, log_loss, e_range, _starts(loss, floor)) if starts is None else
          _solve(x, log_loss, e_range, starts, first=True))
  if best is None:
    raise DegenerateFit("the least-squares fit did not converge")
  e, log_a, alpha = best.x
  return Fit(e=float(e), a=float(np.exp(log_a) * scale ** alpha), alpha=float(alpha),
             rms=float(np.sqrt(np.mean(best.fun ** 2))))


def refit_start(f: Fit, c, floor: float = 0.0) -> list[np.ndarray]:
  """`f` as a start for fit() on resampled points with the same budgets (plus one
  generic start), so bootstrap replicates converge in a few iterations."""
  scale = np.exp(np.log(np.asarray(c, dtype=float)).mean())
  log_a = np.log(f.a) - f.alpha * np.log(scale)
  return [np.array([f.e, log_a, f.alpha]), np.array([floor, log_a, 0.5])]


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  fit: Fit                     # the fit to all points
  fits: tuple[Fit, ...]        # one per replicate that could be fitted
  method: str                  # 'cases' (within each budget) or 'residuals'
  failed: int                  # replicates that could not be fitted

  def interval(self, name: str, level: float = 0.9) -> tuple[float, float]:
    """Percentile interval of parameter `name` ('e', 'a' or 'alpha')."""
    values = [getattr(f, name) for f in self.fits]
    return percentile_interval(values, level)

  def band(self, c, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of the fitted curve at budgets c."""
    curves = np.array([f(c) for f in self.fits])
    tail = 100 * (1 - level) / 2
    return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def percentile_interval(values, level: float = 0.9) -> tuple[float, float]:
  """(low, high): the (1-level)/2 and (1+level)/2 percentiles; inf allowed."""
  values = np.asarray(values, dtype=float)
  if values.size == 0:
    return float("nan"), float("nan")
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(values, [tail, 100 - tail], method="inverted_cdf")
  return float(low), float(high)


def resamples(c, loss, f: Fit, n: int, seed: int):
  """(method, iterator of n resampled loss arrays aligned with sorted c)."""
  rng = np.random.default_rng(seed)
  groups = [np.flatnonzero(c == b) for b in np.unique(c)]
  if all(g.size >= 2 for g in groups):
    def cases():
      for _ in range(n):
        index = np.concatenate([rng.choice(g, g.size) for g in groups])
        yield c[index], loss[index]
    return "cases", cases()
  residuals = np.log(loss) - np.log(f(c))
  residuals *= np.sqrt(c.size / max(c.size - N_PARAMS, 1))
  def residual():
    for _ in range(n):
      yield c, f(c) * np.exp(rng.choice(residuals, c.size))
  return "residuals", residual()


def bootstrap(c, loss, n: int = 1000, seed: int = 0, floor: float = 0.0) -> Bootstrap:
  """The fit to all points and to n bootstrap replicates (seeded: reproducible);
  E >= floor in every fit."""
  c, loss = check_points(c, loss, floor)
  f = fit(c, loss, floor)
  method, replicates = resamples(c, loss, f, n, seed)
  fits, failed = [], 0
  for c_b, loss_b in replicates:
    try:
      fits.append(fit(c_b, loss_b, floor, starts=refit_start(f, c_b, floor)))
    except DegenerateFit:
      failed += 1
  return Bootstrap(fit=f, fits=tuple(fits), method=method, failed=failed)


@dataclasses.dataclass(frozen=True)
class Crossover:
  budget: float | None   # first budget in [low, high] where `other` goes below `base`
  status: str            # 'crosses', 'below from the start', 'never below'
  low: float
  high: float
  back_above: float | None = None   # where it goes back above `base` afterwards, if it does

  def sort_key(self) -> float:
    """For percentiles across replicates: never below -> +inf, below from the start -> -inf."""
    if self.status == "crosses":
      return self.budget
    return -np.inf if self.status == "below from the start" else np.inf


GRID_POINTS = 2048


def crossover(base: Fit, other: Fit, low: float, high: float) -> Crossover:
  """Where other(C) - base(C) changes sign from >= 0 to < 0 in [low, high], found
  on a log-spaced grid and refined by brentq (in log C)."""
  if not 0 < low < high:
    raise ValueError(f"crossover range must satisfy 0 < low < high, got [{low}, {high}]")
  log_c = np.linspace(np.log(low), np.log(high), GRID_POINTS)
  gap = lambda t: other(np.exp(t)) - base(np.exp(t))
  below = gap(log_c) < 0
  changes = np.flatnonzero(below[1:] != below[:-1])
  roots = [float(np.exp(optimize.brentq(gap, log_c[i], log_c[i + 1]))) for i in changes]
  downs = [r for r, i in zip(roots, changes) if below[i + 1]]
  ups = [r for r, i in zip(roots, changes) if not below[i + 1]]
  if below[0]:
    return Crossover(None, "below from the start", low, high, ups[0] if ups else None)
  if not downs:
    return Crossover(None, "never below", low, high)
  back = [u for u in ups if u > downs[0]]
  return Crossover(downs[0], "crosses", low, high, back[0] if back else None)


def crossover_interval(base: Bootstrap, other: Bootstrap, low: float, high: float,
                       level: float = 0.9) -> tuple[tuple[float, float], float]:
  """((low, high) percentile interval of the crossover budget, share of replicate
  pairs that cross) over paired replicates; -inf / inf stand for 'below from
  the start' / 'never below' in the range."""
  pairs = list(zip(base.fits, other.fits))
  found = [crossover(b, o, low, high) for b, o in pairs]
  keys = [x.sort_key() for x in found]
  share = float(np.mean([x.status == "crosses" for x in found])) if found else float("nan")
  return percentile_interval(keys, level), share
