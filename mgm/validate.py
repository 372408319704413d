"""Config validation in one place, before anything is built or compiled.

Each error names the field and the fix (`ConfigError`).
"""
import os

from mgm import decode
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib

SOURCES = ("synthetic", "text", "tfds")

POSITIVE_INTS = (
    "data.seq_len", "data.text_doc_bytes", "train.steps", "train.batch_size", "train.grad_accum",
    "train.log_every", "train.eval_every", "train.eval_batches",
    "checkpoint.every_steps", "checkpoint.keep", "sample.num_samples",
    "eval.prompt_tokens", "eval.new_tokens")
NON_NEGATIVE_INTS = ("train.max_nonfinite_in_a_row", "eval.continuations")
NON_NEGATIVE_NUMBERS = ("train.warmup_steps", "train.weight_decay", "train.min_lr_ratio",
                        "checkpoint.every_minutes")
POSITIVE_NUMBERS = ("train.lr", "train.grad_clip")


def get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v   # not NaN


def _check_ranges(config):
  """Each field of the tables above: right type, right sign."""
  checks = ((POSITIVE_INTS, _is_int, lambda v: v > 0, "a positive integer"),
            (NON_NEGATIVE_INTS, _is_int, lambda v: v >= 0, "an integer >= 0"),
            (NON_NEGATIVE_NUMBERS, _is_number, lambda v: v >= 0, "a number >= 0"),
            (POSITIVE_NUMBERS, _is_number, lambda v: v > 0, "a number > 0"))
  for fields, right_type, right_sign, what in checks:
    for field in fields:
      value = get(config, field)
      if not right_type(value) or not right_sign(value):
        raise ConfigError(field, f"must be {what}, got {value!r}")
  if not _is_int(config.seed):
    raise ConfigError("seed", f"must be an integer, got {config.seed!r}")


def validate(config):
  """Raise ConfigError for the first value that cannot work."""
  _check_ranges(config)
  _validate_data(config.data)
  _validate_train(config.train)
  _validate_checkpoint(config.checkpoint, config.train)
  spec = spec_lib.from_config(config.model)
  spec_lib.check_hierarchy(spec.levels, config.data.seq_len)
  spec_lib.check_packing(config.data.packing)
  sample = decode.from_config(config.sample, config.model.vocab_size)
  prompt_bytes = len(config.sample.prompt.encode())
  if prompt_bytes + sample.max_new > config.data.seq_len:
    raise ConfigError("sample.max_new_tokens", f"the prompt ({prompt_bytes} bytes) plus "
                      f"{sample.max_new} new tokens exceeds data.seq_len="
                      f"{config.data.seq_len}; lower it")
  if config.eval.prompt_tokens + config.eval.new_tokens > config.data.seq_len:
    raise ConfigError("eval.new_tokens", f"eval.prompt_tokens={config.eval.prompt_tokens} "
                      f"plus eval.new_tokens={config.eval.new_tokens} exceeds data.seq_len="
                      f"{config.data.seq_len}; lower one")


def _validate_data(data):
  if data.source not in SOURCES:
    raise ConfigError("data.source", f"unknown source {data.source!r}; one of {SOURCES}")
  if data.source == "text" and not data.files.strip():
    raise ConfigError("data.files", "is empty but data.source='text'; give a glob such "
                      "as --config.data.files='~/corpus/*.txt'")
  if data.source == "tfds" and not data.tfds_name:
    raise ConfigError("data.tfds_name", "is empty but data.source='tfds'; give a dataset "
                      "name such as tiny_shakespeare")
  if not 0.0 < data.val_fraction < 1.0:
    raise ConfigError("data.val_fraction", f"must lie in (0, 1), got {data.val_fraction!r}")


def _validate_train(train):
  if train.warmup_steps > train.steps:
    raise ConfigError("train.warmup_steps", f"{train.warmup_steps} exceeds train.steps "
                      f"{train.steps}; lower it")
  for name in ("b1", "b2"):
    beta = train[name]
    if not _is_number(beta) or not 0.0 <= beta < 1.0:
      raise ConfigError(f"train.{name}", f"an Adam beta must lie in [0, 1), got {beta!r}")
  if train.batch_size % train.grad_accum:
    raise ConfigError("train.grad_accum", f"{train.grad_accum} does not divide "
                      f"train.batch_size={train.batch_size} into equal micro-batches")
  if train.min_lr_ratio > 1.0:
    raise ConfigError("train.min_lr_ratio", f"{train.min_lr_ratio} > 1 would decay the "
                      "learning rate upwards; use a fraction of train.lr in [0, 1]")


def _validate_checkpoint(ckpt, train):
  if not isinstance(ckpt.keep_best, bool):
    raise ConfigError("checkpoint.keep_best", f"must be True or False, got {ckpt.keep_best!r}")
  if ckpt.keep_best and ckpt.every_steps % train.eval_every:
    raise ConfigError("checkpoint.keep_best", "ranks checkpoints by eval_bpb, so every "
                      f"checkpoint step needs an eval: checkpoint.every_steps={ckpt.every_steps} "
                      f"is not a multiple of train.eval_every={train.eval_every}; change one")
  if not isinstance(ckpt.init_from, str):
    raise ConfigError("checkpoint.init_from", f"must be a path, got {ckpt.init_from!r}")
  if ckpt.init_from and not os.path.isdir(os.path.expanduser(ckpt.init_from)):
    raise ConfigError("checkpoint.init_from", f"{ckpt.init_from!r} is not a directory; give "
                      "a workdir, its checkpoints/ directory or one step directory in it")
