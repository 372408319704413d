"""A task mixture (issue 14 part 1): one shared decoder trained on several tasks
at once, L = sum_i lambda_i L_i (mgm/data/mixture.py).

Tasks (data.tasks; rate = share of rows, weight = lambda_i):
  lm         synthetic corpus text, no input          rate 1    weight 1
  caption    shapes: image -> caption                 rate 1    weight 1
  translate  corpus sentence -> the synthetic language rate 1   weight 1
  copy       source -> itself                         rate 0.5  weight 1
Encoders by modality: one text encoder (translate and copy share it), one image
encoder (caption), fused by concatenation; a row's task says which memory it
has (the others masked) and a learned task embedding tells the decoder the task.

Presets, after the colon: a size, or `key=value,...` with
  size   tiny | demo | small | base (the decoder's shape, as configs/lm.py)
  model  the decoder, one of configs/lm.py MODELS (default flat); its coarsest
         level cross-attends
  task   all (default: the mixture) or one task's name: that task alone, with
         only the encoder it reads (none for lm), as a one-task mixture, so its
         metrics carry the same names (experiments/multitask.py compares them)

  python launch.py --config=configs/multitask.py:tiny --workdir=runs/multitask_tiny
  python launch.py --config=configs/multitask.py:demo --workdir=runs/multitask
  python launch.py --config=configs/multitask.py:model=mgm3,size=demo --workdir=runs/mt_mgm3

metrics.jsonl carries loss_<task>, bpb_<task> and tokens_<task> per logged step,
eval_bpb_<task> per evaluation; summary.json also heldout_<metric>_<task> for the
tasks with an input. A task's rate or weight: --config.data.tasks[3].weight=0.
"""
import ml_collections as mlc

from configs import caption, lm, seq2seq

HELP = (f"presets are a size ({', '.join(lm.SIZES)}) or size=SIZE,model=NAME,task=TASK with "
        f"NAME one of {', '.join(lm.MODELS)} and TASK all or one of lm, caption, translate, copy")

# size -> (target bytes, source bytes)
LENGTHS = {"tiny": (64, 64), "demo": (128, 128), "small": (256, 512), "base": (256, 512)}
# name, source, rate, weight
TASKS = (("lm", "synthetic", 1.0, 1.0), ("caption", "shapes", 1.0, 1.0),
         ("translate", "translate", 1.0, 1.0), ("copy", "copy", 0.5, 1.0))
INPUT = {"lm": None, "caption": "image", "translate": "source", "copy": "source"}


def tasks(names) -> list:
  return [mlc.ConfigDict(dict(name=name, source=source, rate=rate, weight=weight))
          for name, source, rate, weight in TASKS if name in names]


def get_config(arg=None):
  fields = lm.parse_preset(arg, {"size": ("demo", lm.SIZES), "model": ("flat", lm.MODELS),
                                 "task": ("all", ("all", *INPUT))},
                           "configs/multitask.py", HELP)
  size = fields["size"]
  names = tuple(INPUT) if fields["task"] == "all" else (fields["task"],)
  inputs = {INPUT[name] for name in names} - {None}
  target_len, source_len = LENGTHS[size]
  width, depth, heads, patch, _, _ = seq2seq.SHAPES[size]
  side, *_, steps, batch = caption.SHAPES[size]
  c = lm.apply_size(lm.base_config(), fields["model"], size)
  text = mlc.ConfigDict(dict(kind="text", width=width, depth=depth, heads=heads, patch=patch,
                             max_len=source_len, image_size=0, channels=3, mlp_ratio=4))
  c.model.encoders = ([text] if "source" in inputs else []) + (
      [caption.encoder("image_vit", size)] if "image" in inputs else [])
  c.model.fusion = "concat" if len(c.model.encoders) > 1 else ""
  c.model.num_tasks = len(names)
  c.data.update(source_len=source_len, image_size=side, image_channels=3, tasks=tasks(names))
  c = lm.conditioned_run(c, target_len, steps, batch, 4 if size == "tiny" else 64)
  c.model.levels[0].cross_attention = bool(inputs)
  return c
