"""MEGABYTE (Yu et al. 2023) Table 10 in shape: the full model, without the
local model, without the global model.

  python launch.py --experiment=experiments/megabyte.py:cpu --workdir=runs/megabyte
  python launch.py --experiment=experiments/megabyte.py:long --workdir=runs/megabyte-long

"Without the local model": the byte level has no layers, so each byte is read
out from its patch's global context plus the previous byte's embedding.
"Without the global model": the patch level has no layers, so a patch sees
only the previous patch's concatenated embeddings. As in the paper, the arms
train for the same number of steps. Paper numbers: bits/byte on arXiv, Table
10 of arXiv:2305.07185 (Table 6 of the NeurIPS version).
"""
from experiments import common
from mgm.runner import Experiment


def get_experiment(size: str = "cpu") -> Experiment:
  full, no_local, no_global = "MEGABYTE", "w/o local model", "w/o global model"
  return Experiment(
      name="megabyte", title="MEGABYTE Table 10: ablation of the local and global models",
      arms=(common.arm(full, "megabyte", size, paper=0.6871),
            common.arm(no_local, "megabyte", size, {"model.levels[1].depth": 0}, paper=1.263),
            common.arm(no_global, "megabyte", size, {"model.levels[0].depth": 0}, paper=1.373)),
      seeds=common.SEEDS[size],
      match="steps", paper_metric="bits/byte on arXiv (MEGABYTE Table 10)",
      orderings=((full, no_local), (full, no_global)),
      notes="The paper: removing either model gives 'a substantial increase in bpb on "
            "all datasets'. Which removal hurts more differs by dataset there (arXiv: the "
            "global model; audio and ImageNet: the local model).")
