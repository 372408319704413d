"""What the experiments share: their sizes, seeds and time estimates, and the
real text when present.

  cpu    demo-size models (width 128, sequence 256, batch 16) for 100 steps of
         the flat demo's training FLOPs (2.3 TFLOP), 3 seeds per arm; at most
         60 minutes per experiment on 2 cores (estimated_minutes).
  long   the regime MEGABYTE, SpaceByte and Hourglass argue about: sequences
         of 2048 bytes at demo widths (batch 2: the same 4,096 bytes a step),
         300 steps of the flat model's 46 GFLOP a step (13.8 TFLOP); attention
         doubles the flat model's cost per byte there, so at matched FLOPs the
         hierarchical models train 1.5-3.9x more steps. 3 seeds; a few hours
         per experiment on 2 cores. On the synthetic corpus a row holds about 8
         independent documents (averaging 242 bytes): the regime tests compute,
         not long-range use; the granularity experiment's Shakespeare arms have
         long-range text.
  gpu    long's models at batch 8 (16,384 bytes a step), 500 steps of the flat
         model's training FLOPs, 3 seeds (fewer arms or seeds where the estimate
         asks): at most 10 minutes per experiment on one H100/H200 by
         estimated_minutes, whose GPU rate is an assumption, not a measurement.
  paper  small-size models (width 512, sequence 1024) on PG-19 through TFDS
         (prepare it first: `tfds build pg19`), 1 seed; an accelerator run,
         checkpointed every 30 minutes and every 5,000 steps (runner.CHECKPOINT_STEPS).
"""
import os

from configs import lm
from mgm import runner
from mgm.errors import ConfigError
from mgm.runner import Arm

SIZES = ("cpu", "long", "gpu", "paper")
SEEDS = {"cpu": 3, "long": 3, "gpu": 3, "paper": 1}
SEQ_LEN = {"cpu": 256, "long": 2048, "gpu": 2048, "paper": 1024}
# Training FLOP/s and seconds per run besides training (compilation, evaluations,
# continuations, samples) for estimated_minutes. cpu: the recorded granularity
# table on the quiet 2-core machine (experiments/results/: the flat and fixed:8
# arms trained 2.34 TFLOP in 43 and 33 s, 55-70 GFLOP/s, and took 20-25 s more);
# other load on the 2 cores makes runs 2-5x slower. long: cpu's, with attention
# over 2048 bytes assumed less efficient. gpu: assumed, not measured on an H100/H200.
RATES = {"cpu": (55e9, 30.0), "long": (40e9, 30.0), "gpu": (10e12, 25.0)}
MINUTES = {"cpu": 60, "gpu": 10}   # what each size must fit, per experiment
SHARED_TEXT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "shared", "data", "tinyshakespeare.txt")


def check_size(size: str) -> str:
  if size not in SIZES:
    raise ConfigError("--experiment", f"unknown size {size!r}; use experiments/NAME.py:SIZE "
                      f"with SIZE one of {', '.join(SIZES)}")
  return size


def preset(model: str, size: str) -> str:
  """The config preset of `model` at the experiment's size."""
  return f"configs/lm.py:model={model},size={'small' if check_size(size) == 'paper' else 'demo'}"


def levels(model: str, size: str) -> dict:
  """The coarse levels' unit bounds (max_units) at the size's sequence length,
  for the sizes that change the preset's (long, gpu: 2048 bytes on demo models)."""
  if SEQ_LEN[check_size(size)] == lm.SHAPES["demo"][3] or size == "paper":
    return {}
  scale = SEQ_LEN[size] // lm.SHAPES["demo"][3]
  return {f"model.levels[{i}].max_units": level.max_units * scale
          for i, level in enumerate(lm.model_levels(model, "demo")) if level.max_units}


def overrides(size: str) -> dict:
  """What every arm of an experiment of this size overrides."""
  if check_size(size) == "cpu":
    # The recorded cpu tables (experiments/results/) were made reading each row as
    # one stream, before data.packing existed; `none` keeps them reproducible (the
    # synthetic documents average 242 bytes, so most 256-byte rows hold a boundary
    # and document_mask would change every number). `paper` arms use document_mask.
    return {"train.steps": 100, "train.warmup_steps": 10, "eval.continuations": 16,
            "data.packing": "none"}
  if size in ("long", "gpu"):
    batch, steps = (2, 300) if size == "long" else (8, 500)
    return {"data.seq_len": SEQ_LEN[size], "train.batch_size": batch, "train.steps": steps,
            "train.warmup_steps": steps // 10, "eval.continuations": 16,
            "data.packing": "none"}
  return {"data.source": "tfds", "data.tfds_name": "pg19", "data.tfds_text_field": "book_text",
          "eval.continuations": 64, "eval.prompt_tokens": 256, "eval.new_tokens": 64,
          "checkpoint.every_minutes": 30.0}   # and every runner.CHECKPOINT_STEPS steps


def arm(name: str, model: str, size: str, extra: dict | None = None,
        paper: float | None = None) -> Arm:
  """An arm of `model` (configs/lm.py's MODELS) at `size`: the size's overrides,
  its unit bounds, then `extra`."""
  return Arm(name, preset(model, size), {**overrides(size), **levels(model, size),
                                         **(extra or {})}, paper=paper)


def estimated_minutes(experiment: runner.Experiment, size: str) -> float | None:
  """The experiment's wall time at `size` by RATES: every arm's training FLOPs
  at every seed, plus each run's fixed cost; None where no rate is known (paper)."""
  if size not in RATES:
    return None
  flops_per_s, per_run_s = RATES[size]
  plans = runner.planned_overrides(experiment)
  total = 0.0
  for a in experiment.arms:
    config = runner.arm_config(a, plans[a.name])
    total += config.train.steps * runner.flops_per_step(config) / flops_per_s + per_run_s
  return total * experiment.seeds / 60


def shared_text() -> dict | None:
  """Overrides that train on ../shared/data's Shakespeare, or None in a clone without it."""
  if not os.path.exists(SHARED_TEXT):
    return None
  return {"data.source": "text", "data.files": os.path.abspath(SHARED_TEXT)}
