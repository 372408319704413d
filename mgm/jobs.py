"""An experiment's arms as cluster jobs through submitit (SLURM; its local executor in tests).

  python launch.py --experiment=experiments/NAME.py:paper --workdir=DIR --executor=slurm \
      --executor_params=timeout_min=240,partition=gpu,gpus_per_node=1 [--wait]

submits every unfinished arm as one job (an arm's runs, one per seed where an
experiment has several, as one job array: `executor.batch()`), records the job
in the arm's directory (job.json: executor, job id, log folder) and returns. The
same command again collects: an arm whose summary.json is at its planned step
is done; one whose job is still queued or running is left alone; one whose job
ended without finishing it (failed, cancelled, timed out, node lost) is
resubmitted, and resumes from its checkpoints. When every arm is done the runner
writes the table, as after a sequential run. A job runs `runner.train_arm`, the
sequential runner's one function per arm, so a job's result is a local run's.
`--wait` blocks until the submitted jobs end, then collects.

Executor parameters are submitit's `update_parameters` keys: its shared ones
(timeout_min, gpus_per_node, cpus_per_task, mem_gb, nodes, tasks_per_node, name)
and the executor's own, with or without its prefix (`partition` or
`slurm_partition`). Every flag is checked before anything is written: a bad one
is a ConfigError naming it (launch.py: one line, exit 2).
"""
import contextlib
import dataclasses
import json
import os
import pickle
import re
import shlex
import sys
import tempfile
import time

from absl import logging

from mgm.errors import ConfigError

EXECUTORS = ("slurm", "local")
# submitit's shared keys (AutoExecutor's) and their types
TYPES = {"name": str, "timeout_min": int, "mem_gb": float, "nodes": int, "cpus_per_task": int,
         "gpus_per_node": int, "tasks_per_node": int, "stderr_to_stdout": bool}
RESERVED = ("setup",)   # the runner's: it makes a SLURM job start where launch.py ran
# submitit's local executor ends a job after 2 minutes unless told otherwise.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
# SLURM states of a job that may still finish its arm (sacct's; submitit's
# UNKNOWN, a job sacct does not list yet or any more, is handled apart).
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED")
JOB_FILE = "job.json"


@dataclasses.dataclass(frozen=True)
class Executor:
  """Which submitit executor, and its parameters as AutoExecutor.update_parameters takes them."""
  name: str
  params: dict


def executor_from_flags(name: str | None, params: str | None, dry_run: bool = False,
                        wait: bool = False, experiment: bool = True) -> Executor | None:
  """launch.py's --executor, --executor_params, --dry_run and --wait (and whether it was
  given --experiment) -> an Executor, or None (arms run here one after another).
  Raises ConfigError naming the flag."""
  if name and not experiment:
    raise ConfigError("--executor", "submits an experiment's arms; give --experiment="
                      "experiments/NAME.py:size, or run --config here without it")
  if not name:
    for flag, given in (("--executor_params", params), ("--wait", wait)):
      if given:
        raise ConfigError(flag, "applies to jobs only; add --executor=slurm (or local)")
    return None
  if name not in EXECUTORS:
    raise ConfigError("--executor", f"{name!r} is not one; one of {', '.join(EXECUTORS)}")
  if dry_run:
    raise ConfigError("--dry_run", "prints commands to run elsewhere; give it or --executor, "
                      "not both")
  parsed = _pairs(params or "")
  if name == "slurm" and not {"timeout_min", "slurm_time"} & set(_keys(name, parsed)):
    raise ConfigError("--executor_params", "give timeout_min=MINUTES for the SLURM jobs "
                      "(submitit's default, 5, would stop most arms); an arm that runs out of "
                      "time is resubmitted by the same command and resumes")
  converted = {_key(name, key): _value(name, key, value) for key, value in parsed.items()}
  if name == "local":
    converted.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
  return Executor(name, converted)


def _pairs(text: str) -> dict[str, str]:
  pairs = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, equals, value = item.partition("=")
    if not equals or not key.strip():
      raise ConfigError("--executor_params", f"{item!r} is not KEY=VALUE; e.g. "
                        "timeout_min=240,partition=gpu")
    pairs[key.strip()] = value.strip()
  return pairs


def _own_keys(name: str) -> set[str]:
  import submitit   # deferred: only a run with --executor needs it
  cls = {"slurm": submitit.SlurmExecutor, "local": submitit.LocalExecutor}[name]
  return set(cls._valid_parameters()) - set(RESERVED)


def _keys(name: str, parsed: dict) -> list[str]:
  return [_key(name, key) for key in parsed]


def _key(name: str, key: str) -> str:
  """A flag's key -> AutoExecutor's: a shared key as it is, the executor's own prefixed."""
  bare = key[len(name) + 1:] if key.startswith(name + "_") else key
  if key in TYPES:
    return key
  if bare in RESERVED:
    raise ConfigError("--executor_params", f"{key!r} is set by the runner (the job starts in "
                      "launch.py's directory); start launch.py where the jobs should run")
  if bare not in _own_keys(name):
    known = sorted(TYPES) + sorted(_own_keys(name))
    raise ConfigError("--executor_params", f"{key!r} is not a {name} parameter of submitit; "
                      f"one of {', '.join(known)}")
  return f"{name}_{bare}"


def _value(name: str, key: str, text: str):
  """'60' -> 60 for a shared key of type int, and so on; the executor's own keys: an int,
  a float, true/false, or the text."""
  kind = TYPES.get(key)
  if kind is str:
    return text
  if kind is bool or (kind is None and text.lower() in ("true", "false")):
    if text.lower() not in ("true", "false"):
      raise ConfigError("--executor_params", f"{key}={text!r}: give true or false")
    return text.lower() == "true"
  for convert in ((kind,) if kind else (int, float)):
    try:
      value = convert(text)
    except ValueError:
      continue
    if kind and value <= 0:
      raise ConfigError("--executor_params", f"{key}={text!r}: must be positive")
    return value
  if kind:
    raise ConfigError("--executor_params", f"{key}={text!r}: must be {kind.__name__}")
  return text


# -- the job -------------------------------------------------------------------

def run_unit(arm, overrides: dict, directory: str) -> dict:
  """What a job (each of its tasks) runs: the arm's training in `directory` by the
  sequential runner's own function (runner.train_arm), after
  `jax.distributed.initialize` where the arm's config asks for it (a job of several
  tasks or nodes: --config.distributed.auto=True), as launch.py does. Returns
  loop.run_mode's result."""
  from absl import flags
  from mgm import runner, sharding
  if not flags.FLAGS.is_parsed():   # no app.run in a job; grain workers read flags
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO)
  sharding.initialize_distributed(runner.arm_config(arm, overrides).distributed)
  return runner.train_arm(arm, overrides, directory)


# -- submitting and collecting -------------------------------------------------

def make_executor(spec: Executor, workdir: str):
  """A submitit AutoExecutor logging to workdir/jobs/ (<job id>_0_log.err, ...), whose
  jobs start in this process's directory with the repository importable: SLURM's
  by setup lines in the sbatch script; local ones inherit this process's directory
  and environment (`pythonpath` around the submission), since setup lines would
  start them under a shell whose pid, the job id, dies before the job on SIGTERM."""
  import submitit
  executor = submitit.AutoExecutor(os.path.join(workdir, "jobs"), cluster=spec.name)
  executor.update_parameters(**spec.params)
  if spec.name == "slurm":
    executor.update_parameters(slurm_setup=[
        f"cd {shlex.quote(os.getcwd())}",
        f"export PYTHONPATH={shlex.quote(_root())}${{PYTHONPATH:+:$PYTHONPATH}}"])
  return executor


def _root() -> str:
  from mgm.runner import ROOT
  return ROOT


@contextlib.contextmanager
def pythonpath():
  """This repository first on PYTHONPATH in os.environ while submitting (local jobs)."""
  before = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (_root(), before)))
  try:
    yield
  finally:
    if before is None:
      del os.environ["PYTHONPATH"]
    else:
      os.environ["PYTHONPATH"] = before


def record_path(directory: str) -> str:
  return os.path.join(directory, JOB_FILE)


def read_record(directory: str) -> dict | None:
  try:
    with open(record_path(directory), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_record(directory: str, spec: Executor, job, previous: dict | None):
  """job.json in the arm's directory: the job that trains it now, and the earlier ones."""
  from mgm.files import write_json
  earlier = (previous or {}).get("earlier_jobs", [])
  if previous:
    earlier = earlier + [previous["job_id"]]
  os.makedirs(directory, exist_ok=True)
  write_json(record_path(directory), {
      "executor": spec.name, "job_id": str(job.job_id), "folder": str(job.paths.folder),
      "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
      "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "earlier_jobs": earlier})


def job_state(record: dict) -> str:
  """The recorded job's state: SLURM's (sacct, through submitit) or, for the local
  executor, RUNNING while its controller process lives, else ENDED."""
  if record["executor"] == "local":
    return "RUNNING" if _local_alive(record["job_id"]) else "ENDED"
  import submitit
  job = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
  state = job.watcher.get_state(job.job_id, mode="force")   # sacct; 'CANCELLED by 12'
  return (state.split() or ["UNKNOWN"])[0].upper()


def _local_alive(job_id: str) -> bool:
  try:
    with open(f"/proc/{int(job_id)}/cmdline", "rb") as f:   # a zombie's is empty
      return b"submitit.local._local" in f.read()
  except (OSError, ValueError):
    return False


def _result(record: dict):
  """The job's (outcome, payload) from submitit's result pickle, or None (no result)."""
  from submitit.core.utils import JobPaths
  path = JobPaths(record["folder"], job_id=record["job_id"], task_id=0).result_pickle
  try:
    with open(path, "rb") as f:
      return pickle.load(f)
  except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
    return None


def why_unfinished(record: dict) -> str:
  """One line: why the recorded job, now ended, left its arm unfinished."""
  result = _result(record)
  if result is None:
    return f"ended without a result (cancelled, out of time or its node lost); its log: " \
           f"{record.get('stderr', record['folder'])}"
  outcome, payload = result
  if outcome == "error":
    lines = [l.strip() for l in str(payload).splitlines() if l.strip()]
    return f"failed: {lines[-1] if lines else 'no traceback'}"
  if isinstance(payload, dict) and "stopped_by" in payload:
    return f"stopped by {payload['stopped_by']} (its step saved)"
  return "ended, but the arm's summary.json is not at its planned step"


def unit_state(directory: str, steps: int) -> tuple[str, str]:
  """(state, why) of one arm's run in `directory`: 'done' (summary at `steps`),
  'running' (its recorded job is queued or running, or its state is unknown),
  or 'submit' (no job yet, or one that ended without finishing)."""
  from mgm import runner
  if runner.status(directory, steps) == "done":
    return "done", ""
  record = read_record(directory)
  if record is None:
    return "submit", "not submitted yet"
  state = job_state(record)
  if state in ACTIVE:
    return "running", f"job {record['job_id']} {state.lower()}"
  if state == "UNKNOWN" and _result(record) is None:   # sacct does not list it (yet)
    return "running", (f"job {record['job_id']}: state unknown (sacct does not list it); "
                       f"delete {record_path(directory)} to resubmit it")
  return "submit", f"job {record['job_id']} {why_unfinished(record)}"


def survey(experiment, runs: list[tuple], workdir: str) -> list[tuple]:
  """(arm, overrides, directory, state, why) of every run (arm, overrides, directory):
  unit_state's, logged."""
  index = {arm.name: i for i, arm in enumerate(experiment.arms)}
  out = []
  for arm, overrides, directory in runs:
    state, why = unit_state(directory, overrides["train.steps"])
    logging.info("experiment %s, arm %d/%d %r: %s%s in %s", experiment.name, index[arm.name] + 1,
                 len(experiment.arms), arm.name, state, f" ({why})" if why else "", directory)
    out.append((arm, overrides, directory, state, why))
  return out


def submit(runs: list[tuple], spec: Executor, workdir: str) -> list:
  """Submit the runs (arm, overrides, directory): one batch per arm; record each
  job in its directory. Returns the submitit jobs."""
  executor, jobs = make_executor(spec, workdir), []
  by_arm = {}
  for arm, overrides, directory in runs:
    by_arm.setdefault(arm.name, (arm, []))[1].append((overrides, directory))
  for arm, its_runs in by_arm.values():
    executor.update_parameters(name=f"mgm-{re.sub(r'[^A-Za-z0-9_.-]+', '-', arm.name)}")
    with pythonpath(), executor.batch():
      batch = [executor.submit(run_unit, arm, overrides, directory)
               for overrides, directory in its_runs]
    for job, (_, directory) in zip(batch, its_runs):
      write_record(directory, spec, job, read_record(directory))
      logging.info("arm %r: job %s submitted for %s", arm.name, job.job_id, directory)
    jobs += batch
  return jobs


def submit_and_collect(experiment, runs: list[tuple], workdir: str, spec: Executor,
                       wait: bool = False, poll_s: float | None = None) -> dict:
  """Submit the experiment's unfinished runs (arm, overrides, directory: one per arm,
  or one per arm and seed; an arm's runs are one batch, a job array on SLURM),
  leaving running ones be; with `wait`,
  wait until every job has ended. Returns {'done': [directory], 'running':
  [(directory, why)], 'submitted': [(directory, job id)], 'failed': [(directory, why)],
  'finished': whether every run is done} ('failed': only with `wait`; without it, a
  failed run is resubmitted)."""
  runs = survey(experiment, runs, workdir)
  to_submit = [(arm, overrides, d) for arm, overrides, d, state, _ in runs if state == "submit"]
  jobs = submit(to_submit, spec, workdir) if to_submit else []
  submitted = [(d, str(job.job_id)) for job, (_, _, d) in zip(jobs, to_submit)]
  if wait:
    running = [d for _, _, d, state, _ in runs if state == "running"]
    poll_s = poll_s or (1.0 if spec.name == "local" else 60.0)
    while not all(job.done() for job in jobs) or any(_active(d) for d in running):
      time.sleep(poll_s)
    runs = survey(experiment, [(arm, o, d) for arm, o, d, _, _ in runs], workdir)
  out = {"done": [], "running": [], "submitted": submitted, "failed": [],
         "finished": all(state == "done" for *_, state, _ in runs)}
  for _, _, directory, state, why in runs:
    if state == "done":
      out["done"].append(directory)
    elif state == "running":
      out["running"].append((directory, why))
    elif wait:
      out["failed"].append((directory, why))
  return out


def _active(directory: str) -> bool:
  """Whether the run's recorded job is known to be queued or running."""
  record = read_record(directory)
  return record is not None and job_state(record) in ACTIVE


def result_line(outcome: dict) -> str:
  """launch.py's last line while jobs are out (or failed, after --wait)."""
  counts = (f"{len(outcome['submitted'])} submitted, {len(outcome['running'])} running, "
            f"{len(outcome['done'])} done")
  if outcome["failed"]:
    failed = "; ".join(f"{d}: {why}" for d, why in outcome["failed"])
    return f"jobs: {counts}, {len(outcome['failed'])} failed ({failed}); run the same " \
           "command again to resubmit them"
  ids = " ".join(job_id for _, job_id in outcome["submitted"])
  return f"jobs: {counts}{f' (job ids {ids})' if ids else ''}; run the same command again " \
         "to collect them and write the table once all are done"
