"""Sequence to sequence: a text encoder over source bytes, and the
multi-granularity decoder cross-attending into its memory (issue 12;
ByT5/T5X-style encoder-decoder, Xue et al. 2022).

Presets, after the colon: a size, or `key=value,...` with
  size     tiny | demo | small | base (as configs/lm.py: the decoder's shape)
  model    the decoder, one of configs/lm.py MODELS (default flat); its
           coarsest level cross-attends
  encoder  text (default; bidirectional Transformer) | text_lstm
  task     translate (default) | summarize | copy | reverse | autoencode (a
           passage from its noised bytes, data.noise*): generated from the
           embedded corpus with exact references (mgm/data/paired.py)

  python launch.py --config=configs/seq2seq.py:demo --workdir=runs/translate
      (2026-11-29, 2 shared cores: 7 min; 1.84 bits/byte, BLEU 1.7: the sentence
      shapes are learned, the invented lexicon is not, in 400 steps)
  python launch.py --config=configs/seq2seq.py:task=copy,size=demo --workdir=runs/copy
      (3 min 10 s; exact match 50%, BLEU 73.4, 0.083 bits/byte)
  python launch.py --config=configs/seq2seq.py:task=autoencode,size=demo --workdir=runs/ae
      (2 cores shared with 8 other jobs, at nice 19: 12 min 26 s; 0.863 bits/byte, exact
      match 0%, BLEU 27.3, chrF 57.3: the unmasked bytes copied with slips, the span guessed)
  python launch.py --config=configs/seq2seq.py:task=summarize,model=mgm3 --workdir=runs/sum

Real data through TFDS (no TensorFlow), e.g. WMT:
--config.data.source=tfds --config.data.tfds_name=wmt14_translate/de-en
--config.data.tfds_source_field=de --config.data.tfds_target_field=en; CNN/DailyMail:
--config.data.tfds_name=cnn_dailymail --config.data.tfds_source_field=article
--config.data.tfds_target_field=highlights. A local file of pairs:
--config.data.source=pairs --config.data.files=pairs.jsonl (or .tsv).
The source is pooled into one memory vector per `patch` bytes at the larger
sizes, so a long source does not give one memory slot per byte.
"""
import ml_collections as mlc

from configs import lm

ENCODERS = ("text", "text_lstm")
TASKS = ("translate", "summarize", "copy", "reverse", "autoencode")
HELP = (f"presets are a size ({', '.join(lm.SIZES)}) or size=SIZE,model=NAME,encoder=KIND,"
        f"task=TASK with NAME one of {', '.join(lm.MODELS)}, KIND one of "
        f"{', '.join(ENCODERS)} and TASK one of {', '.join(TASKS)}")

# size -> (encoder width, depth, heads, source patch, steps, batch)
SHAPES = {"tiny": (64, 1, 2, 1, 20, 8), "demo": (128, 2, 4, 1, 400, 32),
          "small": (512, 6, 8, 4, 20_000, 64), "base": (768, 12, 12, 4, 50_000, 256)}
# task -> (source bytes, target bytes) at tiny/demo size (x 4 from small up, summarize x 2)
LENGTHS = {"translate": (128, 128), "summarize": (512, 64), "copy": (64, 64),
           "reverse": (64, 64), "autoencode": (64, 64)}


def lengths(task: str, size: str) -> tuple[int, int]:
  source, target = LENGTHS[task]
  if size in ("small", "base"):
    return source * (2 if task == "summarize" else 4), target * 4
  return source, target


def get_config(arg=None):
  fields = lm.parse_preset(arg, {"size": ("demo", lm.SIZES), "model": ("flat", lm.MODELS),
                                 "encoder": ("text", ENCODERS), "task": ("translate", TASKS)},
                           "configs/seq2seq.py", HELP)
  size, task = fields["size"], fields["task"]
  width, depth, heads, patch, steps, batch = SHAPES[size]
  source_len, target_len = lengths(task, size)
  c = lm.apply_size(lm.base_config(), fields["model"], size)
  c.model.encoders = [mlc.ConfigDict(dict(
      kind=fields["encoder"], width=width, depth=depth, heads=heads, patch=patch,
      max_len=source_len, image_size=0, channels=3, mlp_ratio=4))]
  c.data.update(source=task, source_len=source_len)
  return lm.conditioned_run(c, target_len, steps, batch, 8 if size == "tiny" else 64)
