"""Conditioning ablation on captioning, at matched training FLOPs: where the
decoder cross-attends (the coarsest level only / every level / the byte level
only), which fusion of two image encoders, which image encoder, and a blind
arm whose images are all zeros (how much the caption uses the image).

  python launch.py --experiment=experiments/conditioning.py:cpu --workdir=runs/conditioning

cpu: configs/caption.py at demo size on `shapes` (generated scenes, one
correct caption each, so exact match is meaningful); paper: small size on
COCO captions through TFDS (prepare it first: `tfds build coco_captions`).
Every arm trains for the first arm's training FLOPs (encoders and
cross-attention included, mgm/flops.py). No paper reports this table: the
claim tested is that conditioning the coarsest level alone (a few queries per
caption) loses little against conditioning every byte.
"""
from experiments import common
from mgm.runner import Arm, Experiment

METRICS = ("heldout_exact_match", "heldout_bleu", "heldout_cider", "heldout_chrf")


def preset(size: str, model: str = "flat", encoder: str = "image_vit") -> str:
  common.check_size(size)
  return (f"configs/caption.py:size={'demo' if size == 'cpu' else 'small'},model={model},"
          f"encoder={encoder}")


def overrides(size: str) -> dict:
  if size == "cpu":     # half the demo's 400 steps: 9 arms in about an hour on 2 cores
    return {"train.steps": 200}
  return {"data.source": "tfds", "data.tfds_name": "coco_captions",
          "data.tfds_image_field": "image", "data.tfds_target_field": "captions/text",
          "data.tfds_eval_split": "val", "checkpoint.every_minutes": 30.0}


def cross_at(levels: tuple[int, ...], depth: int = 3) -> dict:
  """Cross-attention at exactly `levels` of a `depth`-level decoder."""
  return {f"model.levels[{i}].cross_attention": i in levels for i in range(depth)}


def two_encoders(size: str, fusion: str) -> dict:
  """A ViT and a CNN over the same image, fused."""
  side = 32 if size == "cpu" else 64
  width = 128 if size == "cpu" else 384
  cnn = dict(kind="image_cnn", width=width, depth=3, heads=1, patch=2, max_len=0,
             image_size=side, channels=3, mlp_ratio=4)
  vit = dict(kind="image_vit", width=width, depth=2 if size == "cpu" else 6,
             heads=4 if size == "cpu" else 6, patch=4 if size == "cpu" else 8, max_len=0,
             image_size=side, channels=3, mlp_ratio=4)
  return {"model.encoders": [vit, cnn], "model.fusion": fusion}


def get_experiment(size: str = "cpu") -> Experiment:
  base = overrides(common.check_size(size))
  mgm3 = preset(size, "mgm3")
  arms = (
      Arm("flat decoder, ViT", preset(size), base),
      Arm("mgm3, cross-attention at sentences (coarsest)", mgm3, {**base, **cross_at((0,))}),
      Arm("mgm3, cross-attention at every level", mgm3, {**base, **cross_at((0, 1, 2))}),
      Arm("mgm3, cross-attention at bytes only", mgm3, {**base, **cross_at((2,))}),
      Arm("flat decoder, CNN", preset(size, encoder="image_cnn"), base),
      Arm("flat decoder, ViT + CNN, concat", preset(size), {**base, **two_encoders(size, "concat")}),
      Arm("flat decoder, ViT + CNN, gated", preset(size), {**base, **two_encoders(size, "gated")}),
      Arm("flat decoder, ViT + CNN, resampler", preset(size),
          {**base, **two_encoders(size, "attention:16")}),
      Arm("blind: flat decoder, ViT, images zeroed", preset(size),
          {**base, "data.blind_inputs": True}),
  )
  return Experiment(
      name="conditioning", title="Where and how to condition, at matched training FLOPs",
      arms=arms, match="flops", extra_metrics=METRICS,
      orderings=(("flat decoder, ViT", "blind: flat decoder, ViT, images zeroed"),),
      notes="bits/byte of held-out captions given their images; exact match, BLEU, CIDEr-D "
            "and chrF of 64 greedy held-out captions. The blind arm sees zero images in "
            "training and evaluation: its bits/byte is the captions' language prior.")
