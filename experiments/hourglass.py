"""Hourglass (Nawrot et al. 2022) Tables 6-8 in shape: the pooling of the
shortened level, its upsampling, and the token-level layers before/after it.

  python launch.py --experiment=experiments/hourglass.py:cpu --workdir=runs/hourglass

The `hourglass` preset shortens by 4 with attentive pooling and one token layer
on each side, (1, 1). Pooling arms: ours `attention` is attentive pooling (a
learned softmax-weighted mean of the children), set beside the paper's
"attention with average pooling"; `concat` is a linear map of the
concatenated children, the paper's "linear pooling". Layer arms (pre, post)
set the token layers before and after the shortened level. As in the paper,
the arms train for the same number of steps. Paper numbers: enwik8
validation bits/character, Tables 8 and 6 of arXiv:2110.13711.

Upsampling arm (Table 7): the preset repeats the shortened level's context
(one projection added to each of its 4 children, the paper's naive
upsampling); `upsample=linear` gives each child position its own projection,
the paper's linear upsampling. Table 7's numbers were not at hand, so that
arm has no paper number and no ordering is claimed; attention upsampling is
not implemented.
"""
from experiments import common
from mgm.runner import Arm, Experiment


def layers(pre: int, post: int) -> dict:
  return {"model.levels[1].pre_layers": pre, "model.levels[1].depth": post}


def get_experiment(size: str = "cpu") -> Experiment:
  base, model = common.overrides(size), common.preset("hourglass", size)
  attention, mean, linear = "attention pooling (1,1)", "mean pooling", "linear pooling"
  arms = (Arm(attention, model, base, paper=1.124),
          Arm(mean, model, {**base, "model.levels[0].pool": "mean"}, paper=1.129),
          Arm(linear, model, {**base, "model.levels[0].pool": "concat"}, paper=1.159),
          Arm("linear upsampling", model, {**base, "model.levels[0].upsample": "linear"}),
          Arm("layers (0,2)", model, {**base, **layers(0, 2)}, paper=1.176),
          Arm("layers (2,0)", model, {**base, **layers(2, 0)}, paper=1.189),
          Arm("layers (2,2)", model, {**base, **layers(2, 2)}, paper=1.128))
  return Experiment(
      name="hourglass", title="Hourglass Tables 8, 7 and 6: pooling, upsampling, and token "
      "layers around the shortened level", arms=arms, match="steps",
      paper_metric="enwik8 validation bits/char (Hourglass Table 8: pooling; Table 6: "
                   "layers; the (1,1) row of Table 6 is 1.171)",
      orderings=((attention, mean), (mean, linear), ("layers (2,2)", "layers (0,2)"),
                 ("layers (0,2)", "layers (2,0)"), ("layers (2,2)", "layers (2,0)")),
      notes="The paper: 'attention pooling achieves the best perplexity'; an equal split of "
            "token layers before and after shortening is best ((1,1) 1.171 < (0,2) 1.176 < "
            "(2,0) 1.189 in Table 6). Its pooling and layer rows come from different tables "
            "with different base models, so the (1,1) arm carries Table 8's number and the "
            "layer orderings compare the layer arms among themselves.")
