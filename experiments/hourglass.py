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

Upsampling arms (Table 7): the preset repeats the shortened level's context
(one projection added to each of its 4 children, the paper's naive
upsampling, 1.148 in Table 7; its arm carries Table 8's pooling number);
`upsample=linear` gives each child position its own projection, the paper's
linear upsampling (1.163); `upsample=attention` lets each child's input
attend to its own and the earlier shortened contexts (1.145), and
`attention:linear` adds the linear projection to that (1.132, Table 7's
best). One ordering is claimed, the widest of Table 7's gaps among these
arms: attention + linear below linear.
"""
from experiments import common
from mgm.runner import Experiment


def layers(pre: int, post: int) -> dict:
  return {"model.levels[1].pre_layers": pre, "model.levels[1].depth": post}


def get_experiment(size: str = "cpu") -> Experiment:
  arm = lambda name, extra, paper: common.arm(name, "hourglass", size, extra, paper)
  attention, mean, linear = "attention pooling (1,1)", "mean pooling", "linear pooling"
  linear_up, attention_linear_up = "linear upsampling", "attention + linear upsampling"
  arms = (arm(attention, {}, 1.124),
          arm(mean, {"model.levels[0].pool": "mean"}, 1.129),
          arm(linear, {"model.levels[0].pool": "concat"}, 1.159),
          arm(linear_up, {"model.levels[0].upsample": "linear"}, 1.163),
          arm("attention upsampling", {"model.levels[0].upsample": "attention"}, 1.145),
          arm(attention_linear_up, {"model.levels[0].upsample": "attention:linear"}, 1.132),
          arm("layers (0,2)", layers(0, 2), 1.176),
          arm("layers (2,0)", layers(2, 0), 1.189),
          arm("layers (2,2)", layers(2, 2), 1.128))
  return Experiment(
      name="hourglass", title="Hourglass Tables 8, 7 and 6: pooling, upsampling, and token "
      "layers around the shortened level", arms=arms, match="steps",
      seeds=2 if size == "gpu" else common.SEEDS[size],   # gpu: 9 arms x 2 in ten minutes
      paper_metric="enwik8 validation bits/char (Hourglass Table 8: pooling; Table 7: "
                   "upsampling, where repeat is 1.148; Table 6: layers; the (1,1) row "
                   "of Table 6 is 1.171)",
      orderings=((attention, mean), (mean, linear), (attention_linear_up, linear_up),
                 ("layers (2,2)", "layers (0,2)"),
                 ("layers (0,2)", "layers (2,0)"), ("layers (2,2)", "layers (2,0)")),
      notes="The paper: 'attention pooling achieves the best perplexity'; an equal split of "
            "token layers before and after shortening is best ((1,1) 1.171 < (0,2) 1.176 < "
            "(2,0) 1.189 in Table 6). Its pooling and layer rows come from different tables "
            "with different base models, so the (1,1) arm carries Table 8's number and the "
            "layer orderings compare the layer arms among themselves.")
