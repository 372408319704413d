"""The experiment runner: arms -> runs -> table (Markdown + CSV) and plots.

An experiment file (experiments/NAME.py) defines `get_experiment(size)` and
returns an `Experiment`: its arms (a config preset plus overrides each), how
they are matched (the same training FLOPs or the same steps), the metric and
the paper's numbers. `python launch.py --experiment=experiments/NAME.py:cpu
--workdir=DIR` trains each arm with each of `Experiment.seeds` seeds (config.seed:
the initialisation and the data order) one after another in
DIR/arms/<arm>/seed_<k> (skipping finished runs, resuming unfinished ones from
their checkpoints), then writes DIR/results.{md,csv,json} and DIR/*.png: per arm
the mean and sample standard deviation over seeds, and each ordering's verdict
(mgm/significance.py). A workdir written before seeds existed (DIR/arms/<arm>
holding the run itself) is read as that arm's seed 0. With --dry_run it prints
one launch.py command per run (arm and seed) instead (for a pod or a
cluster), run by the interpreter that
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
  budget_scale: float = 1.0       # trains this multiple of the experiment's budget (FLOPs or steps)
  series: tuple[str, str] = ()    # (corpus, model): the scaling curve this arm is a point of


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
  orderings: tuple[tuple[str, ...], ...] = ()   # (better, worse[, metric]) arm pairs the
                                  # paper reports, judged on `metric` (default: the table's)
  notes: str = ""
  seeds: int = 1                  # runs per arm: config.seed = the arm's seed + 0..seeds-1
  baseline: str = ""              # the series model others' fitted curves are compared to
                                  # (mgm/scaling_report.py: crossover budgets)


def ordering_metric(experiment: Experiment, ordering: tuple) -> str:
  """The metric an ordering (better, worse[, metric]) is judged on."""
  return ordering[2] if len(ordering) == 3 else experiment.metric


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
  if not isinstance(experiment.seeds, int) or experiment.seeds < 1:
    raise ConfigError("seeds", f"{experiment.seeds!r}; a whole number of runs per arm, >= 1")
  if experiment.match not in MATCHES:
    raise ConfigError("match", f"{experiment.match!r}; one of {MATCHES}")
  for ordering in experiment.orderings:
    if len(ordering) not in (2, 3):
      raise ConfigError("orderings", f"{ordering!r}; each is (better arm, worse arm) or "
                        "(better arm, worse arm, metric)")
    for name in ordering[:2]:
      if name not in names:
        raise ConfigError("orderings", f"{name!r} is not an arm of {experiment.name!r}")
    metric = ordering_metric(experiment, ordering)
    if metric not in (experiment.metric, *experiment.extra_metrics):
      raise ConfigError("orderings", f"{ordering!r} judges {metric!r}, which is not a column "
                        "of the table; add it to extra_metrics")
  check_budgets(experiment)


def check_budgets(experiment: Experiment):
  """Arm.budget_scale > 0; Arm.series a (corpus, model) pair; Experiment.baseline one
  of the series' models."""
  for arm in experiment.arms:
    if not arm.budget_scale > 0:
      raise ConfigError(f"{arm.name}: budget_scale", f"{arm.budget_scale!r}; give a multiple > 0 "
                        "of the experiment's budget")
    if arm.series and len(arm.series) != 2:
      raise ConfigError(f"{arm.name}: series", f"{arm.series!r}; give (corpus, model)")
  models = {arm.series[1] for arm in experiment.arms if arm.series}
  if experiment.baseline and experiment.baseline not in models:
    raise ConfigError("baseline", f"{experiment.baseline!r} is no arm's series model; one of "
                      f"{sorted(models)}")


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
    steps = max(1, round(config.train.steps * arm.budget_scale))
    if experiment.match == "flops":
      steps = max(config.train.warmup_steps + 1,
                  round(budget * arm.budget_scale / flops_per_step(config)))
    every = max(1, -(-steps // experiment.evals))
    plans[arm.name] = {**arm.overrides, "train.steps": steps, "train.eval_every": every,
                       "checkpoint.every_steps": min(every, CHECKPOINT_STEPS),
                       "seed": config.seed}
  return plans


def seed_overrides(plan: dict, k: int) -> dict:
  """The arm's planned overrides for its k-th seed (k = 0, 1, ...): config.seed
  moves by k, which changes the initialisation and the training data order (the
  corpus and the evaluation batches stay the same)."""
  return {**plan, "seed": plan.get("seed", 0) + k}


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


def run_dir(workdir: str, arm: Arm, k: int) -> str:
  """The k-th seed's run directory, DIR/arms/<arm>/seed_<k>; seed 0 of a workdir
  from before seeds existed is the arm directory itself (it holds the run)."""
  directory = arm_dir(workdir, arm)
  legacy = any(os.path.exists(os.path.join(directory, name))
               for name in ("summary.json", "metrics.jsonl", "checkpoints"))
  return directory if k == 0 and legacy else os.path.join(directory, f"seed_{k}")


def runs(experiment: Experiment, plans: dict, workdir: str) -> list[tuple[Arm, int, dict, str]]:
  """Every run of the experiment, arm by arm, seed by seed: (arm, k, its
  overrides, its directory). In a string override, `{arms}` becomes this
  workdir's arms directory and `{seed}` the seed index k, so an arm can name an
  earlier arm's run of the same seed (experiments/distill.py: its teachers)."""
  arms = os.path.join(workdir, "arms")
  expand = lambda v, k: (v.replace("{arms}", arms).replace("{seed}", str(k))
                         if isinstance(v, str) else v)
  return [(arm, k, {key: expand(v, k) for key, v in seed_overrides(plans[arm.name], k).items()},
           run_dir(workdir, arm, k))
          for arm in experiment.arms for k in range(experiment.seeds)]


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
  """One run of an arm in `directory` (loop.run_mode's result): what the sequential
  runner runs for each arm and seed and a cluster job runs (mgm/jobs.py), so they agree."""
  from mgm import loop   # deferred: only a run that trains needs it
  return loop.run_mode(arm_config(arm, overrides), directory, "train")


def run_experiment(experiment_path: str, workdir: str, dry_run: bool = False,
                   executor=None, wait: bool = False) -> dict:
  """Train every arm of the experiment `experiment_path` ('experiments/NAME.py:size')
  with each seed, skipping finished runs, then write the table and plots. Returns
  {'table': path} or, when a run was preempted, {'stopped_by', 'arm', 'seed'}; with
  `dry_run`, prints the runs' commands instead. With `executor` (a jobs.Executor)
  the runs are jobs (jobs.submit_and_collect, an arm's seeds one batch; `wait`:
  until they end): {'jobs': its outcome} until every run is done."""
  experiment = load(experiment_path)
  plans = planned_overrides(experiment)
  command_line = f"python launch.py --experiment={experiment_path} --workdir={workdir}"
  workdir = os.path.abspath(workdir)
  todo = runs(experiment, plans, workdir)
  if dry_run:   # stdout: the commands only, so that `| sh` runs them
    for arm, _, overrides, directory in todo:
      print(command(arm, overrides, directory), flush=True)
    print(f"# {len(todo)} runs ({len(experiment.arms)} arms x {experiment.seeds} seeds); when "
          f"they are done, the table: {command_line}", file=sys.stderr)
    return {"arms": len(experiment.arms), "runs": len(todo)}
  if executor is not None:
    from mgm import jobs
    outcome = jobs.submit_and_collect(experiment, [(a, o, d) for a, _, o, d in todo], workdir,
                                      executor, wait=wait)
    if not outcome["finished"]:
      return {"jobs": outcome}
  else:
    stopped = train_in_turn(experiment, todo)
    if stopped:
      return stopped
  return {"table": write_results(experiment, experiment_path, todo, workdir, command_line)}


def train_in_turn(experiment: Experiment, todo: list) -> dict | None:
  """Train the unfinished runs here, one after another: None, or {'stopped_by',
  'arm', 'seed'} when a run was preempted (its step saved)."""
  index = {arm.name: i for i, arm in enumerate(experiment.arms)}
  for arm, k, overrides, directory in todo:
    state = status(directory, overrides["train.steps"])
    seed = f" seed {k + 1}/{experiment.seeds}" if experiment.seeds > 1 else ""
    logging.info("experiment %s, arm %d/%d %r%s: %s (%d steps) in %s", experiment.name,
                 index[arm.name] + 1, len(experiment.arms), arm.name, seed, state,
                 overrides["train.steps"], directory)
    if state == "done":
      continue
    result = train_arm(arm, overrides, directory)
    if "stopped_by" in result:
      return {"stopped_by": result["stopped_by"], "arm": arm.name, "seed": k}
  return None


def write_results(experiment: Experiment, experiment_path: str, todo: list, workdir: str,
                  command_line: str) -> str:
  """The finished runs' summaries and curves, per arm in seed order -> report.write."""
  from mgm import report
  summaries = {arm.name: [] for arm in experiment.arms}
  curves = {arm.name: [] for arm in experiment.arms}
  for arm, _, _, directory in todo:
    summaries[arm.name].append(finished_summary(directory))
    curves[arm.name].append(report.read_curve(directory))
  size = experiment_path.partition(":")[2]
  return report.write(experiment, summaries, curves, workdir, command_line, size=size)


def result_line(result: dict) -> str:
  """The last line of an experiment run (launch.py prints it)."""
  if "jobs" in result:
    from mgm import jobs
    return jobs.result_line(result["jobs"])
  if "stopped_by" in result:
    return (f"stopped by {result['stopped_by']} in arm {result['arm']!r}, seed "
            f"{result.get('seed', 0)} (saved); run the same command again to resume")
  return (f"done: table {result['table']} (results.csv, loss_vs_flops.png and the bar chart "
          "beside it)")
