"""The one entry point: flags -> config -> mode.

  python launch.py --config=configs/lm.py:demo --workdir=runs/demo [--mode=train|eval|sample]
                   [--config.train.steps=100 ...]
  python launch.py --experiment=experiments/granularity.py:cpu --workdir=runs/granularity
                   [--dry_run]
"""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset, e.g. configs/lm.py:demo")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's config, checkpoints, metrics, samples")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do")
_EXPERIMENT = flags.DEFINE_string(
    "experiment", None, "Run an experiment's arms and write its table, e.g. "
    "experiments/granularity.py:cpu (instead of --config)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "With --experiment: print one launch.py "
                             "command per arm instead of running them")


def parse_flags(argv):
  """absl parsing, with bad config overrides turned into one clear line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, ValueError, TypeError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    hint = f" (overrides given: {' '.join(bad)})" if bad else ""
    print(f"launch.py: bad flag or config override{hint}: {e}\n"
          "Check the field name against the config file (fields are printed with "
          "--mode=train at start-up) and the value's type.", file=sys.stderr)
    sys.exit(2)


class _QuietLibraries:
  """Keep what says nothing about the run out of its log: orbax's and grain's
  per-save INFO chatter; jax's INFO that the TPU backend (libtpu) is absent on a
  CPU/GPU machine (a missing backend that was asked for still raises); orbax's
  warning that a manager opened read-only (--mode=eval/sample restores) will
  not save, which is what read-only means; rouge-score announcing its tokenizer."""

  QUIET = ("Unable to initialize backend", "Given directory is read only",
           "Using default tokenizer")   # rouge-score, on every generation eval

  def filter(self, record):
    if record.levelno < std_logging.ERROR and str(record.msg).startswith(self.QUIET):
      return False
    noisy = any(lib in record.pathname for lib in ("/orbax/", "/grain/"))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())   # every logger's records pass it
  # Imported here so `--help` and flag errors do not pay for importing jax.
  from mgm import loop, runner, sharding
  from mgm.errors import ConfigError, TrainingError, WorkdirError

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if (config is None) == (_EXPERIMENT.value is None) or not workdir:
    print("launch.py: --workdir and one of --config or --experiment are required",
          file=sys.stderr)
    return 2
  try:
    if _EXPERIMENT.value:   # arms run here one after another (--dry_run: elsewhere)
      result = runner.run(_EXPERIMENT.value, workdir, dry_run=_DRY_RUN.value)
    else:
      sharding.initialize_distributed(config.distributed)   # before jax touches a device
      result = loop.run(config, workdir, mode)
  except (ConfigError, WorkdirError) as e:   # DataError is a ConfigError
    print(f"launch.py: {e}", file=sys.stderr)
    return 2
  except TrainingError as e:
    print(f"launch.py: training stopped: {e}", file=sys.stderr)
    return 1
  if _EXPERIMENT.value:
    if not _DRY_RUN.value:   # a dry run's stdout is its commands and nothing else
      print(runner.result_line(result))
  elif mode == "sample":
    print("\n\n".join(result))
  else:
    print(loop.result_line(mode, result, workdir))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
