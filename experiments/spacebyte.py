"""SpaceByte (Slagle 2024) Table 1 in shape, at a fixed training-FLOPs budget:
flat byte Transformer, the same with window attention, MegaByte, SpaceByte with
fixed patches, SpaceByte (global blocks at word boundaries).

  python launch.py --experiment=experiments/spacebyte.py:cpu --workdir=runs/spacebyte
  python launch.py --experiment=experiments/spacebyte.py:long --workdir=runs/spacebyte-long

Paper numbers: bits/byte on PG-19 at 1e19 training FLOPs, Table 1 of
arXiv:2404.14408. The `paper` size gives every arm that budget.
"""
from experiments import common
from mgm.runner import Experiment


def get_experiment(size: str = "cpu") -> Experiment:
  flat, window, megabyte, fixed, spacebyte = (
      "Transformer (bytes)", "Transformer (window attention)", "MegaByte",
      "SpaceByte (fixed P=4)", "SpaceByte")
  return Experiment(
      name="spacebyte", title="SpaceByte Table 1: byte-level architectures at matched FLOPs",
      arms=(common.arm(flat, "flat", size, paper=1.138),
            common.arm(window, "flat", size, {"model.levels[0].span": "window:64"}, paper=1.089),
            common.arm(megabyte, "megabyte", size, paper=1.083),
            common.arm(fixed, "spacebyte", size, {"model.levels[0].units": "fixed:4"},
                       paper=1.112),
            common.arm(spacebyte, "spacebyte", size, paper=1.009)),
      match="flops", seeds=common.SEEDS[size], budget_flops=1e19 if size == "paper" else 0.0,
      paper_metric="bits/byte on PG-19 at 1e19 training FLOPs (SpaceByte Table 1)",
      orderings=((spacebyte, flat), (spacebyte, window), (spacebyte, megabyte),
                 (spacebyte, fixed), (window, flat)),
      notes="The paper: SpaceByte beats every other byte-level arm, and 'fixing the patch "
            "size significantly degrades' it (though on PG-19 its fixed-patch variant is "
            "behind MegaByte and window attention).")
