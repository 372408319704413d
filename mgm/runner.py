"""The experiment runner: arms -> runs -> table (Markdown + CSV) and plots.

An experiment file (experiments/NAME.py) defines `get_experiment(size)` and
returns an `Experiment`: its arms (a config preset plus overrides each), how
they are matched (the same training FLOPs or the same steps), the metric and
the paper's numbers. `python launch.py --experiment=experiments/NAME.py:cpu
--workdir=DIR` trains the arms one after another in DIR/arms/<arm> (skipping
finished ones, resuming unfinished ones from their checkpoints), then writes
DIR/results.{md,csv} and DIR/*.png. With --dry_run it prints one launch.py
command per arm instead (for a pod or a cluster), run by the interpreter that
ran the dry run (sys.executable), and nothing else on stdout, so
`... --dry_run | sh` runs them; run the experiment again without it once they
are done to write the tables. With --executor=slurm (or local) the arms are
cluster jobs (mgm/jobs.py) running `train_arm`, as the sequential runner does.
"""
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import sys

from absl import logging
from ml_collections.config_flags import config_path

from mgm import flops
from mgm.errors import ConfigError, WorkdirError
from mgm.model import spec as spec_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATCHES = ("flops", "steps")
# A checkpoint at least this often in steps (besides one per evaluation, and
# checkpoint.every_minutes where the size sets it): a 1.7M-step arm would
# otherwise save only at each quarter.
CHECKPOINT_STEPS = 5000


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  config: str                     # 'configs/lm.py:model=megabyte,size=demo'
  overrides: dict = dataclasses.field(default_factory=dict)   # 'train.lr' -> 1e-3
  paper: float | None = None      # the paper's number for this arm (Experiment.paper_metric)


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  title: str
  arms: tuple[Arm, ...]
  match: str = "flops"            # flops: every arm gets the budget arm's training FLOPs
  budget_arm: str = ""            # whose configured steps fix the budget (default: the first)
  budget_flops: float = 0.0       # or an explicit training-FLOPs budget per arm
  metric: str = "eval_bpb"        # the table's and the bar chart's metric (lower is better)
  extra_metrics: tuple[str, ...] = ()   # more summary.json fields as columns (e.g. 'chrf')
  evals: int = 4                  # evaluations per arm (points on the loss curve)
  paper_metric: str = ""          # what Arm.paper is: 'bits/byte, arXiv (Table 10)'
  orderings: tuple[tuple[str, str], ...] = ()   # (better, worse) arm pairs the paper reports
  notes: str = ""


def load(experiment_path: str) -> Experiment:
  """'experiments/NAME.py:size' -> the Experiment its get_experiment(size) returns."""
  path, _, arg = experiment_path.partition(":")
  module = _import(path)
  if not hasattr(module, "get_experiment"):
    raise ConfigError("--experiment", f"{path} defines no get_experiment(size)")
  experiment = module.get_experiment(arg) if arg else module.get_experiment()
  check(experiment)
  return experiment


def _import(path: str):
  full = path if os.path.isabs(path) else os.path.join(ROOT, path)
  if not os.path.isfile(full):
    raise ConfigError("--experiment", f"no file {path!r}; give experiments/NAME.py:size")
  module_spec = importlib.util.spec_from_file_location(
      "_mgm_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(full))[0]), full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def check(experiment: Experiment):
  names = [arm.name for arm in experiment.arms]
  if not names:
    raise ConfigError("arms", f"experiment {experiment.name!r} has no arms")
  if len(set(slug(n) for n in names)) != len(names):
    raise ConfigError("arms", f"arm names must differ (as directory names): {names}")
  if experiment.budget_arm and experiment.budget_arm not in names:
    raise ConfigError("budget_arm", f"{experiment.budget_arm!r} is not an arm")
  if experiment.match not in MATCHES:
    raise ConfigError("match", f"{experiment.match!r}; one of {MATCHES}")
  for better, worse in experiment.orderings:
    for name in (better, worse):
      if name not in names:
        raise ConfigError("orderings", f"{name!r} is not an arm of {experiment.name!r}")


def slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# -- arms -> configs -----------------------------------------------------------

def base_config(arm: Arm):
  """The arm's config file and preset, with its overrides applied (as the
  command line's --config.PATH=VALUE would)."""
  path, _, arg = arm.config.partition(":")
  config = _import(path).get_config(arg or None)
  for dotted, value in arm.overrides.items():
    try:
      config_path.set_value(dotted, config, value)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
      raise ConfigError(f"{arm.name}: {dotted}", f"cannot override it ({e})")
  return config


def flops_per_step(config) -> float:
  spec = spec_lib.from_config(config.model)
  tokens = config.train.batch_size * config.data.seq_len
  return tokens * flops.train_flops_per_token(spec, config.data.seq_len)


def planned_overrides(experiment: Experiment) -> dict[str, dict]:
  """Arm name -> all its overrides, the runner's (steps, eval and checkpoint
  cadence) included: everything its launch.py command needs."""
  configs = {arm.name: base_config(arm) for arm in experiment.arms}
  budget_name = experiment.budget_arm or experiment.arms[0].name
  budget = (experiment.budget_flops or
            configs[budget_name].train.steps * flops_per_step(configs[budget_name]))
  plans = {}
  for arm in experiment.arms:
    config = configs[arm.name]
    steps = config.train.steps
    if experiment.match == "flops":
      steps = max(config.train.warmup_steps + 1, round(budget / flops_per_step(config)))
    every = max(1, -(-steps // experiment.evals))
    plans[arm.name] = {**arm.overrides, "train.steps": steps, "train.eval_every": every,
                       "checkpoint.every_steps": min(every, CHECKPOINT_STEPS)}
  return plans


def arm_config(arm: Arm, overrides: dict):
  return base_config(dataclasses.replace(arm, overrides=overrides))


def command(arm: Arm, overrides: dict, workdir: str, python: str = sys.executable) -> str:
  """The arm's launch.py command line, quoted for a POSIX shell; run from the
  repository root by `python` (the interpreter running this, by default)."""
  args = [python, "launch.py", f"--config={arm.config}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  return " ".join(shlex.quote(a) for a in args)


# -- running -------------------------------------------------------------------

def arm_dir(workdir: str, arm: Arm) -> str:
  return os.path.join(workdir, "arms", slug(arm.name))


def read_summary(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, "summary.json"), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished_summary(directory: str) -> dict:
  summary = read_summary(directory)
  if summary is None:
    raise WorkdirError(f"{directory} has no readable summary.json although its run "
                       "finished; run the experiment again to redo that arm's summary")
  return summary


def status(directory: str, steps: int) -> str:
  """'done' (its summary is at the planned step), 'resume' (a checkpoint) or 'new'."""
  summary = read_summary(directory)
  if summary and summary.get("steps") == steps:
    return "done"
  return "resume" if os.path.isdir(os.path.join(directory, "checkpoints")) else "new"


def train_arm(arm: Arm, overrides: dict, directory: str) -> dict:
  """One arm's training in `directory` (loop.run_mode's result): what the sequential
  runner runs for each arm and a cluster job runs (mgm/jobs.py), so they agree."""
  from mgm import loop   # deferred: only a run that trains needs it
  return loop.run_mode(arm_config(arm, overrides), directory, "train")


def run_experiment(experiment_path: str, workdir: str, dry_run: bool = False,
                   executor=None, wait: bool = False) -> dict:
  """Train every arm of the experiment `experiment_path` ('experiments/NAME.py:size'),
  skipping finished ones, then write the table and plots. Returns {'table': path}
  or, when a run was preempted, {'stopped_by', 'arm'}; with `dry_run`, prints the
  arms' commands instead. With `executor` (a jobs.Executor) the arms are jobs
  (jobs.submit_and_collect; `wait`: until they end): {'jobs': its outcome} until
  every arm is done."""
  experiment = load(experiment_path)
  plans = planned_overrides(experiment)
  command_line = f"python launch.py --experiment={experiment_path} --workdir={workdir}"
  workdir = os.path.abspath(workdir)
  if dry_run:   # stdout: the commands only, so that `| sh` runs them
    for arm in experiment.arms:
      print(command(arm, plans[arm.name], arm_dir(workdir, arm)), flush=True)
    print(f"# {len(experiment.arms)} arms; when they are done, the table: {command_line}",
          file=sys.stderr)
    return {"arms": len(experiment.arms)}
  if executor is not None:
    from mgm import jobs
    runs = [(arm, plans[arm.name], arm_dir(workdir, arm)) for arm in experiment.arms]
    outcome = jobs.submit_and_collect(experiment, runs, workdir, executor, wait=wait)
    if not outcome["finished"]:
      return {"jobs": outcome}
  else:
    stopped = train_in_turn(experiment, plans, workdir)
    if stopped:
      return stopped
  return write_table(experiment, workdir, command_line)


def train_in_turn(experiment: Experiment, plans: dict, workdir: str) -> dict | None:
  """Train the unfinished arms here, one after another: None, or {'stopped_by', 'arm'}
  when a run was preempted (its step saved)."""
  for i, arm in enumerate(experiment.arms):
    directory, steps = arm_dir(workdir, arm), plans[arm.name]["train.steps"]
    state = status(directory, steps)
    logging.info("experiment %s, arm %d/%d %r: %s (%d steps) in %s", experiment.name, i + 1,
                 len(experiment.arms), arm.name, state, steps, directory)
    if state == "done":
      continue
    result = train_arm(arm, plans[arm.name], directory)
    if "stopped_by" in result:
      return {"stopped_by": result["stopped_by"], "arm": arm.name}
  return None


def write_table(experiment: Experiment, workdir: str, command_line: str) -> dict:
  """The finished arms' table and plots: {'table': path of results.md}."""
  from mgm import report
  rows = [{"arm": arm.name, "paper": arm.paper, **finished_summary(arm_dir(workdir, arm))}
          for arm in experiment.arms]
  curves = {arm.name: report.read_curve(arm_dir(workdir, arm)) for arm in experiment.arms}
  return {"table": report.write(experiment, rows, curves, workdir, command_line)}


def result_line(result: dict) -> str:
  """The last line of an experiment run (launch.py prints it)."""
  if "jobs" in result:
    from mgm import jobs
    return jobs.result_line(result["jobs"])
  if "stopped_by" in result:
    return (f"stopped by {result['stopped_by']} in arm {result['arm']!r} (saved); run the same "
            "command again to resume")
  return (f"done: table {result['table']} (results.csv, loss_vs_flops.png and the bar chart "
          "beside it)")
