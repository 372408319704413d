"""Config validation in one place, before anything is built or compiled.

Each error names the field and the fix (`ConfigError`).
"""
from mgm import decode
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib

SOURCES = ("synthetic", "text", "tfds")

POSITIVE_INTS = (
    "data.seq_len", "data.text_doc_bytes", "train.steps", "train.batch_size",
    "train.log_every", "train.eval_every", "train.eval_batches",
    "checkpoint.every_steps", "checkpoint.keep", "sample.num_samples")
NON_NEGATIVE_NUMBERS = ("train.warmup_steps", "train.weight_decay", "train.min_lr_ratio")
POSITIVE_NUMBERS = ("train.lr", "train.grad_clip")


def get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def validate(config):
  """Raise ConfigError for the first value that cannot work."""
  for field in POSITIVE_INTS:
    value = get(config, field)
    if not _is_int(value) or value <= 0:
      raise ConfigError(field, f"must be a positive integer, got {value!r}")
  for field in NON_NEGATIVE_NUMBERS:
    value = get(config, field)
    if not isinstance(value, (int, float)) or value < 0:
      raise ConfigError(field, f"must be a number >= 0, got {value!r}")
  for field in POSITIVE_NUMBERS:
    value = get(config, field)
    if not isinstance(value, (int, float)) or value <= 0:
      raise ConfigError(field, f"must be a number > 0, got {value!r}")
  _validate_data(config.data)
  _validate_train(config.train)
  spec = spec_lib.from_config(config.model)
  spec_lib.check_hierarchy(spec.levels, config.data.seq_len)
  sample = decode.from_config(config.sample, config.model.vocab_size)
  prompt_bytes = len(config.sample.prompt.encode())
  if prompt_bytes + sample.max_new > config.data.seq_len:
    raise ConfigError("sample.max_new_tokens", f"the prompt ({prompt_bytes} bytes) plus "
                      f"{sample.max_new} new tokens exceeds data.seq_len="
                      f"{config.data.seq_len}; lower it")


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
  if not (0.0 <= train.b1 < 1.0 and 0.0 <= train.b2 < 1.0):
    raise ConfigError("train.b1", "Adam betas train.b1 and train.b2 must lie in [0, 1)")
