"""An experiment's compute-scaling curves (experiments/scaling.py): scaling.png and
a section of results.md.

Arms with a `series` (corpus, model) are points of that model's curve on that
corpus: their training FLOPs (summary.json `train_flops`) against the
experiment's metric. Per series: L(C) = E + A C^-alpha fitted with a bootstrap
interval (mgm/scaling_fit.py; E at least the corpus's entropy floor where it has
one); per corpus, the budget at which each model's
curve goes below the baseline model's (Experiment.baseline) within
[smallest budget, CROSSOVER_REACH x largest budget].
"""
import math
import os

import numpy as np

from mgm import report, scaling_fit

LEVEL = 0.9                 # bootstrap interval: 5th..95th percentile
REPLICATES = 500
CROSSOVER_REACH = 100.0     # the crossover range extends this far beyond the largest budget


def series_points(experiment, rows) -> dict:
  """{corpus: {model: (C array, L array)}} from the arms' rows, in arm order; an
  arm with several rows (one per seed) gives several points at its budget."""
  out = {}
  for arm in experiment.arms:
    if not arm.series:
      continue
    corpus, model = arm.series
    c, loss = out.setdefault(corpus, {}).setdefault(model, ([], []))
    for row in rows:
      if row["arm"] == arm.name:
        c.append(row["train_flops"])
        loss.append(row[experiment.metric])
  return {corpus: {m: (np.array(c, float), np.array(l, float)) for m, (c, l) in models.items()}
          for corpus, models in out.items()}


def corpus_floor(experiment, rows, corpus: str) -> float | None:
  """The entropy floor shared by the corpus's arms, or None (real text)."""
  names = {arm.name for arm in experiment.arms if arm.series and arm.series[0] == corpus}
  floors = {row.get("entropy_floor_bpb") for row in rows if row["arm"] in names}
  return floors.pop() if len(floors) == 1 else None


def fit_corpus(models: dict, baseline: str, replicates: int, floor: float | None = None,
               seed: int = 0) -> dict:
  """{'fits': {model: Bootstrap | reason str}, 'crossovers': {model: (Crossover,
  interval, share) | reason str}, 'range': (low, high), 'points': models} for one
  corpus's {model: (C, L)}."""
  fits = {}
  for model, (c, loss) in models.items():
    try:
      fits[model] = scaling_fit.bootstrap(c, loss, replicates, seed, floor or 0.0)
    except scaling_fit.DegenerateFit as e:
      fits[model] = f"no fit: {e}"
  budgets = np.concatenate([c for c, _ in models.values()])
  low, high = float(budgets.min()), float(budgets.max()) * CROSSOVER_REACH
  crossovers = {}
  base = fits.get(baseline)
  for model, other in fits.items():
    if model == baseline or not baseline:
      continue
    if isinstance(base, str) or isinstance(other, str) or base is None:
      crossovers[model] = f"no {baseline} or no {model} fit"
      continue
    point = scaling_fit.crossover(base.fit, other.fit, low, high)
    interval, share = scaling_fit.crossover_interval(base, other, low, high, LEVEL)
    crossovers[model] = (point, interval, share)
  return {"fits": fits, "crossovers": crossovers, "range": (low, high), "points": models}


def _flops(value: float) -> str:
  if value == -math.inf:
    return "before the range"
  if value == math.inf:
    return "none in range"
  return f"{value:.3g}"


def _interval(bootstrap, name: str) -> str:
  low, high = bootstrap.interval(name, LEVEL)
  return f"[{low:.3g}, {high:.3g}]"


def crossover_text(item) -> str:
  """A table cell: the fitted crossover, its interval and share of replicates crossing."""
  if isinstance(item, str):
    return item
  point, (low, high), share = item
  text = f"{point.budget:.3g} FLOPs" if point.status == "crosses" else point.status
  if point.back_above:
    text += f" (above again from {point.back_above:.3g})"
  return f"{text}; {LEVEL:.0%} CI [{_flops(low)}, {_flops(high)}], {share:.0%} of replicates cross"


def markdown(experiment, fitted: dict) -> str:
  """The section of results.md: one fit table per corpus."""
  lines = ["", "## Compute scaling", "",
           f"Per model, {experiment.metric} against training FLOPs C fitted as "
           "L(C) = E + A·C^(-α) (least squares in log space, E at least the corpus's "
           f"entropy floor where it has one; {LEVEL:.0%} bootstrap percentile intervals over "
           f"{REPLICATES} replicates: residuals, or seeds within a budget when each has "
           "several). "
           f"Crossover: the budget at which the model's fitted curve goes below "
           f"{experiment.baseline or 'the baseline'}'s, searched from the smallest budget to "
           f"{CROSSOVER_REACH:g}x the largest (beyond the data: an extrapolation). "
           "Plot: `scaling.png`."]
  for corpus, result in fitted.items():
    low, high = result["range"]
    lines += ["", f"### {corpus} (crossover range {low:.3g} to {high:.3g} FLOPs)", "",
              "| model | points | E | E CI | A | α | α CI | rms (log) | crossover vs "
              f"{experiment.baseline} | bootstrap |", "|---" * 10 + "|"]
    for model, b in result["fits"].items():
      cross = crossover_text(result["crossovers"].get(model, "baseline"))
      n = len(result["points"][model][0])
      if isinstance(b, str):
        lines.append(f"| {model} | {n} | {b} |  |  |  |  |  | {cross} |  |")
        continue
      f = b.fit
      lines.append(f"| {model} | {n} | {f.e:.4g} | {_interval(b, 'e')} | {f.a:.3g} | "
                   f"{f.alpha:.3g} | {_interval(b, 'alpha')} | {f.rms:.2g} | {cross} | "
                   f"{len(b.fits)} fits, {b.failed} failed ({b.method}) |")
  return "\n".join(lines) + "\n"


def plot(path: str, points: dict, fitted: dict, floors: dict, metric: str, title: str):
  """One panel per corpus: points, fitted curves (dotted past the data) with their
  bootstrap band, the entropy floor; log-log axes."""
  import matplotlib.pyplot as plt   # report has chosen the Agg backend
  from matplotlib import ticker
  corpora = list(points)
  fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora) + 2.5, 4.8),
                           squeeze=False, layout="constrained")
  for ax, corpus in zip(axes[0], corpora):
    models, result = points[corpus], fitted[corpus]
    low, high = result["range"]
    grid = np.geomspace(low / 1.5, high, 200)
    for (model, (c, loss)), color in zip(models.items(), report.colors(len(models))):
      ax.plot(c, loss, "o", color=color, markersize=4, label=model)
      b = result["fits"][model]
      if isinstance(b, str):
        continue
      inside = grid <= c.max()
      ax.plot(grid[inside], b.fit(grid[inside]), "-", color=color, linewidth=1.2)
      ax.plot(grid[~inside], b.fit(grid[~inside]), ":", color=color, linewidth=1.2)
      if b.fits:
        ax.fill_between(grid, *b.band(grid, LEVEL), color=color, alpha=0.12, linewidth=0)
    if floors.get(corpus):
      ax.axhline(floors[corpus], color="k", linestyle="--", linewidth=1,
                 label=f"entropy floor {floors[corpus]:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", title=corpus)
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  axes[0][0].set_ylabel(f"{metric} (log scale)")
  fig.suptitle(f"{title}\nfits: solid over the data, dotted beyond; bands: {LEVEL:.0%} "
               "bootstrap", fontsize=10)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(experiment, rows, workdir: str, results_md: str) -> str:
  """scaling.png and the fit tables appended to results_md; returns the plot's path."""
  points = series_points(experiment, rows)
  floors = {corpus: corpus_floor(experiment, rows, corpus) for corpus in points}
  fitted = {corpus: fit_corpus(models, experiment.baseline, REPLICATES, floors[corpus])
            for corpus, models in points.items()}
  path = os.path.join(workdir, "scaling.png")
  plot(path, points, fitted, floors, experiment.metric,
       f"{experiment.title} ({experiment.metric})")
  with open(results_md, "a", encoding="utf-8") as f:
    f.write(markdown(experiment, fitted))
  return path
