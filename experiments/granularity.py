"""Granularity ablation: 1, 2 and 3 levels; fixed patches against word and
sentence units, and the byte level's mixer (attention, LSTM, GRU, conv), at
matched training FLOPs.

  python launch.py --experiment=experiments/granularity.py:cpu --workdir=runs/granularity
  python launch.py --experiment=experiments/granularity.py:long --workdir=runs/granularity-long

On the synthetic corpus (its entropy floor is in the table) and, when
../shared/data is present, on Shakespeare (cpu and long sizes; gpu size: the
five synthetic level/unit arms only, to fit ten minutes). Every arm trains for the flat
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
  seq_len = common.SEQ_LEN[size]
  name = lambda arm: f"{data_name}: {arm}"
  return [
      common.arm(name("1 level (bytes)"), "flat", size, data),
      common.arm(name("2 levels, fixed:8"), "megabyte", size, data),
      common.arm(name("2 levels, words"), "megabyte", size,
                 {**data, **two_levels("word", 16, 1 / 2, seq_len)}),
      common.arm(name("2 levels, sentences"), "megabyte", size,
                 {**data, **two_levels("sentence", 256, 1 / 8, seq_len)}),
      common.arm(name("3 levels, words + sentences"), "mgm3", size, data),
  ]


def mixer_arms(size: str) -> list[Arm]:
  """The byte level's generator as each mixer (mgm/nn/mixers.py), the rest as
  MEGABYTE's and mgm3's presets: does the local model need attention? The
  recurrent byte levels under MEGABYTE's patches (LSTM, GRU) run 4-10x slower
  than their FLOPs say on a CPU (611 and 284 s against 59 s for attention in
  the recorded table), so only `paper` size has them."""
  arms = [common.arm("synthetic: 2 levels, fixed:8, conv:4 bytes", "megabyte", size,
                     {"model.levels[1].mixer": "conv:4"}),
          common.arm("synthetic: 3 levels, GRU bytes", "mgm3_gru", size)]
  if size == "paper":
    arms[:0] = [common.arm("synthetic: 2 levels, fixed:8, LSTM bytes", "megabyte_lstm", size),
                common.arm("synthetic: 2 levels, fixed:8, GRU bytes", "megabyte", size,
                           {"model.levels[1].mixer": "gru"})]
  return arms


def get_experiment(size: str = "cpu") -> Experiment:
  arms = arms_on("synthetic", {}, common.check_size(size))
  if size == "gpu":   # ten minutes: the levels and units alone
    return experiment(arms, size)
  arms += [     # the other presets, on the same budget
      common.arm("synthetic: hourglass preset (fixed:4)", "hourglass", size),
      common.arm("synthetic: spacebyte preset (words)", "spacebyte", size)]
  arms += mixer_arms(size)
  text = common.shared_text()
  if text and size in ("cpu", "long"):
    arms += arms_on("shakespeare", text, size)
  return experiment(arms, size)


def experiment(arms: list[Arm], size: str) -> Experiment:
  return Experiment(
      name="granularity", title="Granularity ablation at matched training FLOPs",
      arms=tuple(arms), match="flops", extra_metrics=("chrf", "rougeL"),
      seeds=common.SEEDS[size],
      notes="Synthetic arms share the corpus's entropy floor (column `entropy_floor_bpb`); "
            "the Shakespeare arms appear only where ../shared/data exists. chrF and "
            "ROUGE-L score greedy 32-byte continuations of 16 held-out 64-byte prompts.")
