"""Conditioning ablation on captioning, at matched training FLOPs: where the
decoder cross-attends (the coarsest level only / every level / the byte level
only), which fusion of two image encoders, which image encoder, and a blind
arm whose images are all zeros (how much the caption uses the image).

  python launch.py --experiment=experiments/conditioning.py:cpu --workdir=runs/conditioning

cpu: configs/caption.py at demo size on `shapes` (generated scenes, one
correct caption each, so exact match is meaningful), 200 steps, the four arms
that carry the claims (flat, mgm3 at its coarsest level and at every level,
blind) with 3 seeds in about an hour on 2 cores; gpu: all nine arms at the
caption demo's 400 steps with 2 seeds (ten minutes on one H100/H200 by
common.estimated_minutes); paper: small size on COCO captions through TFDS
(prepare it first: `tfds build coco_captions`). No `long` size: captions are
tens of bytes, not thousands.
Every arm trains for the first arm's training FLOPs (encoders and
cross-attention included, mgm/flops.py). No paper reports this table: the
claim tested is that conditioning the coarsest level alone (a few queries per
caption) loses little against conditioning every byte.
"""
from experiments import common
from mgm.errors import ConfigError
from mgm.runner import Arm, Experiment

METRICS = ("heldout_exact_match", "heldout_bleu", "heldout_cider", "heldout_chrf")


def check_size(size: str) -> str:
  if common.check_size(size) == "long":
    raise ConfigError("--experiment", "experiments/conditioning.py has no long size (captions "
                      "are tens of bytes); use :cpu, :gpu or :paper")
  return size


def preset(size: str, model: str = "flat", encoder: str = "image_vit") -> str:
  check_size(size)
  return (f"configs/caption.py:size={'small' if size == 'paper' else 'demo'},model={model},"
          f"encoder={encoder}")


def overrides(size: str) -> dict:
  if size == "cpu":     # half the demo's 400 steps
    return {"train.steps": 200}
  if size == "gpu":     # the caption demo's own budget
    return {"train.steps": 400}
  return {"data.source": "tfds", "data.tfds_name": "coco_captions",
          "data.tfds_image_field": "image", "data.tfds_target_field": "captions/text",
          "data.tfds_eval_split": "val", "checkpoint.every_minutes": 30.0}


def cross_at(levels: tuple[int, ...], depth: int = 3) -> dict:
  """Cross-attention at exactly `levels` of a `depth`-level decoder."""
  return {f"model.levels[{i}].cross_attention": i in levels for i in range(depth)}


def two_encoders(size: str, fusion: str) -> dict:
  """A ViT and a CNN over the same image, fused."""
  side = 32 if size != "paper" else 64
  width = 128 if size != "paper" else 384
  cnn = dict(kind="image_cnn", width=width, depth=3, heads=1, patch=2, max_len=0,
             image_size=side, channels=3, mlp_ratio=4)
  vit = dict(kind="image_vit", width=width, depth=2 if size != "paper" else 6,
             heads=4 if size != "paper" else 6, patch=4 if size != "paper" else 8, max_len=0,
             image_size=side, channels=3, mlp_ratio=4)
  return {"model.encoders": [vit, cnn], "model.fusion": fusion}


def get_experiment(size: str = "cpu") -> Experiment:
  base = overrides(check_size(size))
  mgm3 = preset(size, "mgm3")
  arms = (
      Arm("flat decoder, ViT", preset(size), base),
      Arm("mgm3, cross-attention at sentences (coarsest)", mgm3, {**base, **cross_at((0,))}),
      Arm("mgm3, cross-attention at every level", mgm3, {**base, **cross_at((0, 1, 2))}),
      Arm("blind: flat decoder, ViT, images zeroed", preset(size),
          {**base, "data.blind_inputs": True}))
  if size != "cpu":   # the other arms: an hour each seed on 2 cores
    arms += more_arms(size, base)
  return Experiment(
      name="conditioning", title="Where and how to condition, at matched training FLOPs",
      arms=arms, match="flops", extra_metrics=METRICS, seeds=2 if size == "gpu" else
      common.SEEDS[size],
      orderings=(("flat decoder, ViT", "blind: flat decoder, ViT, images zeroed"),),
      notes="bits/byte of held-out captions given their images; exact match, BLEU, CIDEr-D "
            "and chrF of 64 greedy held-out captions. The blind arm sees zero images in "
            "training and evaluation: its bits/byte is the captions' language prior.")


def more_arms(size: str, base: dict) -> tuple[Arm, ...]:
  """Cross-attention at the byte level only; the CNN encoder; ViT + CNN fusions."""
  return (
      Arm("mgm3, cross-attention at bytes only", preset(size, "mgm3"),
          {**base, **cross_at((2,))}),
      Arm("flat decoder, CNN", preset(size, encoder="image_cnn"), base),
      Arm("flat decoder, ViT + CNN, concat", preset(size), {**base, **two_encoders(size, "concat")}),
      Arm("flat decoder, ViT + CNN, gated", preset(size), {**base, **two_encoders(size, "gated")}),
      Arm("flat decoder, ViT + CNN, resampler", preset(size),
          {**base, **two_encoders(size, "attention:16")}))
