"""Image captioning: an image encoder, and the multi-granularity decoder
cross-attending into its memory (issue 12; CapPa-style, Tschannen et al. 2023).

Presets, after the colon: a size, or `key=value,...` with
  size     tiny | demo | small | base (as configs/lm.py: the decoder's shape)
  model    the decoder, one of configs/lm.py MODELS (default flat); its
           coarsest level cross-attends (--config.model.levels[i].cross_attention
           moves or adds it)
  encoder  image_vit (default) | image_cnn

  python launch.py --config=configs/caption.py:demo --workdir=runs/caption
      (400 steps of 32 captions: 3 min 36 s on 2 quiet CPU cores, 2026-11-29;
      held-out exact match 18.8%, BLEU 62.5, CIDEr-D 5.0, 0.103 bits/byte; the
      same run with --config.data.blind_inputs=True: 0.0%, 24.3, 0.8, 0.235)
  python launch.py --config=configs/caption.py:model=mgm3,encoder=image_cnn,size=demo \\
      --workdir=runs/caption_mgm3

Data: `shapes` (generated scenes of 1-3 objects with exactly one correct
caption, mgm/data/shapes.py) at 32 x 32 pixels; COCO through TFDS with
--config.data.source=tfds --config.data.tfds_name=coco_captions
--config.data.tfds_image_field=image --config.data.tfds_target_field=captions/text
(see README, "Conditioned generation"). After training, eval.examples held-out
images are captioned greedily and scored (exact match, BLEU, chrF, CIDEr-D,
ROUGE) into summary.json; outputs/ holds every caption and a PNG grid.
"""
import ml_collections as mlc

from configs import lm

ENCODERS = ("image_vit", "image_cnn")
HELP = (f"presets are a size ({', '.join(lm.SIZES)}) or size=SIZE,model=NAME,encoder=KIND "
        f"with NAME one of {', '.join(lm.MODELS)} and KIND one of {', '.join(ENCODERS)}")

# size -> (image side, encoder width, depth, heads, patch, caption bytes, steps, batch)
SHAPES = {"tiny": (32, 64, 1, 2, 8, 144, 20, 8),
          "demo": (32, 128, 2, 4, 4, 144, 400, 32),
          "small": (64, 384, 6, 6, 8, 144, 20_000, 64),
          "base": (224, 768, 12, 12, 16, 256, 50_000, 256)}


def encoder(kind: str, size: str) -> mlc.ConfigDict:
  side, width, depth, heads, patch, _, _, _ = SHAPES[size]
  if kind == "image_cnn":    # 3 stages (2 for tiny), stride 2 after a stem of stride patch/2
    return mlc.ConfigDict(dict(kind=kind, width=width, depth=2 if size == "tiny" else 3, heads=1,
                               patch=max(patch // 2, 1), max_len=0, image_size=side,
                               channels=3, mlp_ratio=4))
  return mlc.ConfigDict(dict(kind=kind, width=width, depth=depth, heads=heads, patch=patch,
                             max_len=0, image_size=side, channels=3, mlp_ratio=4))


def get_config(arg=None):
  fields = lm.parse_preset(arg, {"size": ("demo", lm.SIZES), "model": ("flat", lm.MODELS),
                                 "encoder": ("image_vit", ENCODERS)},
                           "configs/caption.py", HELP)
  size = fields["size"]
  c = lm.apply_size(lm.base_config(), fields["model"], size)
  side, _, _, _, _, target_len, steps, batch = SHAPES[size]
  c.model.encoders = [encoder(fields["encoder"], size)]
  c.data.update(source="shapes", image_size=side, image_channels=3)
  return lm.conditioned_run(c, target_len, steps, batch, 8 if size == "tiny" else 64)
