"""Compute-scaling curves: flat, MegaByte, Hourglass, SpaceByte and mgm3, each
trained at several budgets; eval bits/byte against training FLOPs, a fitted
L(C) = E + A C^-alpha per model with a bootstrap interval, and the budget at
which each hierarchical model's curve goes below flat's (mgm/scaling_report.py).

  python launch.py --experiment=experiments/scaling.py:cpu --workdir=runs/scaling

Each arm is one (corpus, model, budget) point, trained from scratch with its own
learning-rate schedule (warmup a tenth of flat's steps at that budget), so a
point is the end of a full run, not a point on a longer run's curve. Models keep
their preset's size: the curves are training-compute curves at fixed model size
(E includes what a model of that size cannot learn), not compute-optimal
frontiers. Corpora: the synthetic one (entropy floor drawn) and Shakespeare when
../shared/data exists at `cpu` size; synthetic and PG-19 at `paper` size.

Budgets (multiples of BUDGETS[size]'s base, a factor 8 or 16 apart):
  cpu    base: flat demo's 100 steps (2.34 TFLOP); x 1/4, 1/2, 1, 2 (flat: 25 to
         200 steps). 5 models x 4 budgets x 2 corpora = 40 arms, 87.6 TFLOP in all:
         about 15 minutes of training at 100 GFLOP/s effective plus ~20 s of
         compilation and evaluation per arm; ~30-45 minutes on 2 shared cores.
  long   base: flat's 300 steps at 2048 bytes (common.overrides('long')); x 1/8 .. 1,
         synthetic + Shakespeare: hours on 2 cores.
  gpu    base: flat's 500 steps at 2048 bytes, batch 8; x 1/16 .. 1/2, synthetic
         only: ~9 minutes on one H100/H200 by common.estimated_minutes.
  paper  base 1e18 FLOPs; x 1/16 .. 1 (flat small: 10.8k to 172k steps), for an
         accelerator pod.
One seed per arm: a curve's four budgets replicate the measurement, and the
bootstrap resamples its residuals (mgm/scaling_fit.py); 3 seeds would triple
the cpu size past its hour.
"""
from fractions import Fraction

from experiments import common
from mgm.errors import ConfigError
from mgm.runner import Arm, Experiment

MODELS = ("flat", "megabyte", "hourglass", "spacebyte", "mgm3")
# size -> (budget FLOPs at scale 1, or 0 for flat's configured steps; scales;
#          warmup steps at scale 1, scaled with the budget)
BUDGETS = {"cpu": (0.0, (Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2)), 10),
           "long": (0.0, tuple(Fraction(1, 2 ** k) for k in (3, 2, 1, 0)), 30),
           "gpu": (0.0, tuple(Fraction(1, 2 ** k) for k in (4, 3, 2, 1)), 50),
           "paper": (1e18, tuple(Fraction(1, 2 ** k) for k in (4, 3, 2, 1, 0)), 8600)}


def corpora(size: str) -> dict:
  """{corpus name: data overrides}: synthetic, and real text where there is some."""
  out = {"synthetic": {"data.source": "synthetic", "data.tfds_name": ""}}   # not paper's PG-19
  if size in ("cpu", "long"):
    text = common.shared_text()
    if text:
      out["shakespeare"] = text
  elif size == "paper":
    out["pg19"] = {}     # common.overrides('paper') reads PG-19
  return out   # gpu: synthetic only (a lent machine has no ../shared)


def arms(size: str) -> list[Arm]:
  _, scales, warmup = BUDGETS[size]
  base = common.overrides(size)
  out = []
  for corpus, data in corpora(size).items():
    for model in MODELS:
      for scale in scales:
        out.append(Arm(f"{corpus}: {model} x{scale}", common.preset(model, size),
                       {**base, **common.levels(model, size), **data,
                        "train.warmup_steps": max(1, round(warmup * scale))},
                       budget_scale=float(scale), series=(corpus, model)))
  return out


def get_experiment(size: str = "cpu") -> Experiment:
  common.check_size(size)
  if size not in BUDGETS:
    raise ConfigError("--experiment", f"experiments/scaling.py has no {size!r} size; one of "
                      f"{sorted(BUDGETS)}")
  return Experiment(
      name="scaling", title="Compute scaling: bits/byte against training FLOPs",
      arms=tuple(arms(size)), match="flops", budget_flops=BUDGETS[size][0], evals=1,
      baseline="flat",
      notes="Each row is one (corpus, model, budget) run; the fits, crossover budgets and "
            "scaling.png are below. Hierarchical models cost fewer FLOPs per byte, so at "
            "one budget they take more steps than flat.")
