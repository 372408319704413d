"""The one entry point: flags -> config -> mode.

  python launch.py --config=configs/lm.py:demo --workdir=runs/demo [--mode=train|eval|sample]
                   [--config.train.steps=100 ...]
  python launch.py --experiment=experiments/granularity.py:cpu --workdir=runs/granularity
                   [--dry_run | --executor=slurm --executor_params=timeout_min=240,partition=gpu
                    [--wait]]
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
                             "command per run (arm and seed) instead of running them")
_EXECUTOR = flags.DEFINE_string(
    "executor", None, "With --experiment: submit the arms as jobs through submitit, to "
    "slurm (or local: this machine, as the tests do); the same command again collects "
    "finished arms, resubmits failed ones and writes the table when all are done")
_EXECUTOR_PARAMS = flags.DEFINE_string(
    "executor_params", None, "With --executor: submitit's update_parameters as KEY=VALUE,... "
    "e.g. timeout_min=240,partition=gpu,gpus_per_node=1 (slurm needs timeout_min)")
_WAIT = flags.DEFINE_bool("wait", False, "With --executor: wait until the jobs end, then "
                          "collect them (the table once every arm is done)")


HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull", "--helpxml")


def parse_flags(argv):
  """absl parsing, with a bad preset or config override turned into one clear line
  (exit 2), and --help exiting 0 after printing the help."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()   # ml_collections defers a missing file's error to first use
    return rest
  except OSError as e:
    print(f"launch.py: --config: {_text(e).splitlines()[-1].strip()}", file=sys.stderr)
    sys.exit(2)
  except SystemExit as e:   # absl's --help prints the help, then exits 1
    if any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except (AttributeError, KeyError, IndexError, ValueError, TypeError, flags.Error) as e:
    line, in_config_file = flag_error_line(e)
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    if in_config_file:   # the preset or the config file itself
      print(f"launch.py: {line}", file=sys.stderr)
    else:
      hint = f" (overrides given: {' '.join(bad)})" if bad else ""
      print(f"launch.py: bad flag or config override{hint}: {line}; check the field name "
            "against the config file and the value's type", file=sys.stderr)
    sys.exit(2)


def flag_error_line(error: BaseException) -> tuple[str, bool]:
  """(one line, whether it came from running the config file) for a flag error: the
  config file's own message rather than ml_collections' traceback text, a
  KeyError's text rather than its repr."""
  chain = [error]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  texts = [_text(e) for e in chain]
  in_file = any("Error whilst parsing config file" in t for t in texts)
  text = next((t for t in texts if "Traceback (most recent call last)" not in t), texts[-1])
  return " ".join(l.strip() for l in text.splitlines() if l.strip()), in_file


def _text(error: BaseException) -> str:
  arg = error.args[0] if len(error.args) == 1 else None
  if isinstance(arg, BaseException):   # AttributeError(KeyError(...)): the inner one
    return _text(arg)
  return arg if isinstance(arg, str) else str(error)


class _QuietLibraries:
  """Keep what says nothing about the run out of its log: the INFO chatter of
  orbax (per save), grain and TFDS (per load); jax's INFO that the TPU backend
  (libtpu) is absent on a CPU/GPU machine (a missing backend that was asked for still raises); orbax's
  warning that a manager opened read-only (--mode=eval/sample restores) will
  not save, which is what read-only means; rouge-score announcing its tokenizer."""

  QUIET = ("Unable to initialize backend", "Given directory is read only",
           "Using default tokenizer")   # rouge-score, on every generation eval

  def filter(self, record):
    if record.levelno < std_logging.ERROR and str(record.msg).startswith(self.QUIET):
      return False
    noisy = any(lib in record.pathname
                for lib in ("/orbax/", "/grain/", "/tensorflow_datasets/"))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())   # every logger's records pass it
  # Imported here so `--help` and flag errors do not pay for importing jax.
  from mgm import jobs, loop, runner, sharding
  from mgm.errors import ConfigError, TrainingError, WorkdirError

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if (config is None) == (_EXPERIMENT.value is None) or not workdir:
    print("launch.py: --workdir and one of --config or --experiment are required",
          file=sys.stderr)
    return 2
  try:
    executor = jobs.executor_from_flags(_EXECUTOR.value, _EXECUTOR_PARAMS.value, _DRY_RUN.value,
                                        _WAIT.value, experiment=bool(_EXPERIMENT.value))
    if _EXPERIMENT.value:   # arms run here one after another (--dry_run: elsewhere; jobs)
      result = runner.run_experiment(_EXPERIMENT.value, workdir, dry_run=_DRY_RUN.value,
                                     executor=executor, wait=_WAIT.value)
    else:
      sharding.initialize_distributed(config.distributed)   # before jax touches a device
      result = loop.run_mode(config, workdir, mode)
  except (ConfigError, WorkdirError) as e:   # DataError is a ConfigError
    print(f"launch.py: {e}", file=sys.stderr)
    return 2
  except TrainingError as e:
    print(f"launch.py: training stopped: {e}", file=sys.stderr)
    return 1
  if _EXPERIMENT.value:
    if not _DRY_RUN.value:   # a dry run's stdout is its commands and nothing else
      print(runner.result_line(result))
    if result.get("jobs", {}).get("failed"):   # after --wait
      return 1
  elif mode == "sample":
    print("\n\n".join(result))
  else:
    print(loop.result_line(mode, result, workdir))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
