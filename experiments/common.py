"""What the experiments share: their two sizes, and the real text when present.

  cpu    demo-size models (width 128, sequence 256, batch 16) for 100 steps of
         the flat demo's training FLOPs (2.3 TFLOP); minutes per arm on 2 cores.
  paper  small-size models (width 512, sequence 1024) on PG-19 through TFDS
         (prepare it first: `tfds build pg19`); an accelerator run, checkpointed
         every 30 minutes and every 5,000 steps (runner.CHECKPOINT_STEPS).
"""
import os

from mgm.errors import ConfigError

SIZES = ("cpu", "paper")
SHARED_TEXT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "..", "shared", "data", "tinyshakespeare.txt")


def check_size(size: str) -> str:
  if size not in SIZES:
    raise ConfigError("--experiment", f"unknown size {size!r}; use experiments/NAME.py:cpu "
                      "or :paper")
  return size


def preset(model: str, size: str) -> str:
  """The config preset of `model` at the experiment's size."""
  return f"configs/lm.py:model={model},size={'demo' if check_size(size) == 'cpu' else 'small'}"


def overrides(size: str) -> dict:
  """What every arm of an experiment of this size overrides."""
  if check_size(size) == "cpu":
    # The recorded cpu tables (experiments/results/) were made reading each row as
    # one stream, before data.packing existed; `none` keeps them reproducible (the
    # synthetic documents average 242 bytes, so most 256-byte rows hold a boundary
    # and document_mask would change every number). `paper` arms use document_mask.
    return {"train.steps": 100, "train.warmup_steps": 10, "eval.continuations": 16,
            "data.packing": "none"}
  return {"data.source": "tfds", "data.tfds_name": "pg19", "data.tfds_text_field": "book_text",
          "eval.continuations": 64, "eval.prompt_tokens": 256, "eval.new_tokens": 64,
          "checkpoint.every_minutes": 30.0}   # and every runner.CHECKPOINT_STEPS steps


def shared_text() -> dict | None:
  """Overrides that train on ../shared/data's Shakespeare, or None in a clone without it."""
  if not os.path.exists(SHARED_TEXT):
    return None
  return {"data.source": "text", "data.files": os.path.abspath(SHARED_TEXT)}
