"""Granularity ablation: 1, 2 and 3 levels; fixed patches against word and
sentence units, and the byte level's mixer (attention, LSTM, GRU, conv), at
matched training FLOPs.

  python launch.py --experiment=experiments/granularity.py:cpu --workdir=runs/granularity

On the synthetic corpus (its entropy floor is in the table) and, when
../shared/data is present, on Shakespeare. Every arm trains for the flat
model's training FLOPs; hierarchical arms cost less per byte, so they take
more steps. With the hourglass and spacebyte presets, every preset of
configs/lm.py appears at demo size on one budget. No paper reports this table;
its point is the ordering of the granularities on one budget.
"""
from experiments import common
from mgm.runner import Arm, Experiment


def two_levels(units: str, max_len: int, max_units_per_byte: float, seq_len: int) -> dict:
  """MEGABYTE's two levels with delimiter units instead of fixed patches."""
  return {"model.levels[0].units": units, "model.levels[0].pool": "attention",
          "model.levels[0].max_len": max_len,
          "model.levels[0].max_units": int(seq_len * max_units_per_byte)}


def arms_on(data_name: str, data: dict, size: str) -> list[Arm]:
  seq_len = 256 if size == "cpu" else 1024
  base = {**common.overrides(size), **data}
  name = lambda arm: f"{data_name}: {arm}"
  return [
      Arm(name("1 level (bytes)"), common.preset("flat", size), base),
      Arm(name("2 levels, fixed:8"), common.preset("megabyte", size), base),
      Arm(name("2 levels, words"), common.preset("megabyte", size),
          {**base, **two_levels("word", 16, 1 / 2, seq_len)}),
      Arm(name("2 levels, sentences"), common.preset("megabyte", size),
          {**base, **two_levels("sentence", 256, 1 / 8, seq_len)}),
      Arm(name("3 levels, words + sentences"), common.preset("mgm3", size), base),
  ]


def mixer_arms(size: str) -> list[Arm]:
  """The byte level's generator as each mixer (mgm/nn/mixers.py), the rest as
  MEGABYTE's and mgm3's presets: does the local model need attention?"""
  base = common.overrides(size)
  local = lambda mixer: {**base, "model.levels[1].mixer": mixer}
  return [
      Arm("synthetic: 2 levels, fixed:8, LSTM bytes", common.preset("megabyte_lstm", size), base),
      Arm("synthetic: 2 levels, fixed:8, GRU bytes", common.preset("megabyte", size), local("gru")),
      Arm("synthetic: 2 levels, fixed:8, conv:4 bytes", common.preset("megabyte", size),
          local("conv:4")),
      Arm("synthetic: 3 levels, GRU bytes", common.preset("mgm3_gru", size), base)]


def get_experiment(size: str = "cpu") -> Experiment:
  base = common.overrides(size)
  arms = arms_on("synthetic", {}, size) + [     # the other presets, on the same budget
      Arm("synthetic: hourglass preset (fixed:4)", common.preset("hourglass", size), base),
      Arm("synthetic: spacebyte preset (words)", common.preset("spacebyte", size), base)]
  arms += mixer_arms(size)
  text = common.shared_text()
  if text and size == "cpu":
    arms += arms_on("shakespeare", text, size)
  return Experiment(
      name="granularity", title="Granularity ablation at matched training FLOPs",
      arms=tuple(arms), match="flops", extra_metrics=("chrf", "rougeL"),
      notes="Synthetic arms share the corpus's entropy floor (column `entropy_floor_bpb`); "
            "the Shakespeare arms appear only where ../shared/data exists. chrF and "
            "ROUGE-L score greedy 32-byte continuations of 16 held-out 64-byte prompts.")
