"""Arms as jobs through submitit (mgm/jobs.py), with its local executor: a two-arm
tiny experiment whose second arm's job fails at run time (its text files are not
there yet) is collected over three invocations of the runner: the first trains
one arm and reports the other's failure, the second resubmits only the failed
arm and writes the table, the third submits nothing. A job trains what the
sequential runner trains; bad executor flags are refused before anything is
written."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from mgm import jobs, runner
from mgm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = '''
from mgm.runner import Arm, Experiment

def get_experiment(size="tiny"):
  quick = {{"train.batch_size": 8, "train.warmup_steps": 1, "train.eval_batches": 1,
           "sample.num_samples": 1, "sample.max_new_tokens": 4, "eval.continuations": 0,
           "train.steps": 3, "train.log_every": 1}}
  text = {{"data.source": "text", "data.files": "{corpus}/*.txt", "data.text_doc_bytes": 512,
          "data.val_fraction": 0.2}}
  return Experiment(
      name="jobs", title="Two arms as jobs",
      arms=(Arm("synthetic", "configs/lm.py:tiny", quick),
            Arm("text", "configs/lm.py:tiny", {{**quick, **text}})),
      match="steps", evals=1)
'''
# One thread per job process: the local executor's jobs share the machine with the suite.
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def run_path(workdir, name: str):
  """The directory of the arm `name`'s (only) run: its arm directory, or its seed 0's
  (runner.run_dir) where an experiment's runs have seeds."""
  return pathlib.Path(runner.run_dir(str(workdir), runner.Arm(name, "configs/lm.py:tiny"), 0))


def write_corpus(directory):
  """Text for the 'text' arm: 4 KB in 512-byte documents (ASCII, deterministic)."""
  directory.mkdir(exist_ok=True)
  words = ["granularity", "byte", "patch", "word", "sentence", "level", "model", "the", "a"]
  text = " ".join(words[(i * 7 + i // 5) % len(words)] for i in range(800))
  (directory / "corpus.txt").write_text(text + "\n")


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
  """Three invocations of runner.run_experiment with the local executor and --wait, the
  'text' arm's files written after the first. {'workdir', 'experiment': path, 'results':
  [run_experiment's return], 'submitted': [[directories jobs.submit got] per invocation],
  'records': [{arm: job.json} after each invocation], 'finished': [[arms with a
  summary.json, and 'table' if results.md is there] after each invocation]}."""
  tmp = tmp_path_factory.mktemp("jobs")
  corpus, workdir = tmp / "corpus", tmp / "run"
  path = tmp / "two.py"
  path.write_text(EXPERIMENT.format(corpus=corpus))
  executor = jobs.executor_from_flags("local", "", wait=True)
  out = {"workdir": workdir, "experiment": f"{path}:tiny", "results": [], "submitted": [],
         "records": [], "finished": []}
  real_submit = jobs.submit

  def spy(runs, spec, directory):
    out["submitted"][-1] += [d for _, _, d in runs]
    return real_submit(runs, spec, directory)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD}".strip())
    patch.setattr(jobs, "submit", spy)
    for i in range(3):
      if i == 1:
        write_corpus(corpus)
      out["submitted"].append([])
      out["results"].append(runner.run_experiment(out["experiment"], str(workdir),
                                                  executor=executor, wait=True))
      out["records"].append({arm: json.loads((run_path(workdir, arm) / "job.json").read_text())
                             for arm in ("synthetic", "text")})
      out["finished"].append([arm for arm in ("synthetic", "text")
                              if (run_path(workdir, arm) / "summary.json").exists()] +
                             ["table"] * (workdir / "results.md").exists())
  return out


def test_first_invocation_trains_one_arm_and_reports_the_failed_job(rounds):
  workdir, (first, *_) = rounds["workdir"], rounds["results"]
  assert sorted(rounds["submitted"][0]) == [str(run_path(workdir, a))
                                            for a in ("synthetic", "text")]
  outcome = first["jobs"]
  assert outcome["done"] == [str(run_path(workdir, "synthetic"))]
  [(directory, why)] = outcome["failed"]
  assert directory == str(run_path(workdir, "text"))
  assert "failed" in why and "data.files" in why and "matches no file" in why, why
  assert rounds["finished"][0] == ["synthetic"]          # no table yet
  line = runner.result_line(first)
  assert "1 failed" in line and "run the same command again to resubmit" in line


def test_second_invocation_resubmits_only_the_failed_arm_and_writes_the_table(rounds):
  workdir = rounds["workdir"]
  assert rounds["submitted"][1] == [str(run_path(workdir, "text"))]
  assert rounds["results"][1] == {"table": str(workdir / "results.md")}
  assert rounds["finished"][1] == ["synthetic", "text", "table"]
  before, after = rounds["records"][0], rounds["records"][1]
  assert after["synthetic"] == before["synthetic"]                 # not resubmitted
  assert after["text"]["job_id"] != before["text"]["job_id"]
  assert after["text"]["earlier_jobs"] == [before["text"]["job_id"]]
  table = (workdir / "results.md").read_text()
  for arm in ("synthetic", "text"):
    summary = json.loads((run_path(workdir, arm) / "summary.json").read_text())
    assert summary["steps"] == 3
    assert f"{summary['eval_bpb']:.3f}" in table


def test_third_invocation_submits_nothing(rounds):
  assert rounds["submitted"][2] == []
  assert rounds["records"][2] == rounds["records"][1]
  assert rounds["results"][2] == {"table": str(rounds["workdir"] / "results.md")}


def test_a_job_trains_what_the_sequential_runner_trains(rounds, tmp_path):
  """The 'synthetic' arm trained here by runner.train_arm (the sequential runner's
  path) logs the same losses and ends at the same eval bits/byte as its job."""
  experiment = runner.load(rounds["experiment"])
  arm = experiment.arms[0]
  plan = runner.planned_overrides(experiment)[arm.name]
  runner.train_arm(arm, plan, str(tmp_path / "here"))
  job_dir = run_path(rounds["workdir"], "synthetic")
  losses = [[(row["step"], row["train_loss"], row["grad_norm"]) for row in map(
      json.loads, (d / "metrics.jsonl").read_text().splitlines())]
            for d in (job_dir, tmp_path / "here")]
  assert losses[0] == losses[1] and [step for step, *_ in losses[0]] == [1, 2, 3]
  summaries = [json.loads((d / "summary.json").read_text()) for d in (job_dir, tmp_path / "here")]
  assert summaries[0]["eval_bpb"] == summaries[1]["eval_bpb"]


@pytest.mark.parametrize("flags, field, words", [
    (dict(name="pbs"), "--executor", "one of slurm, local"),
    (dict(name="slurm", params="partition=gpu"), "--executor_params", "timeout_min=MINUTES"),
    (dict(name="slurm", params="timeout_min=60,partition"), "--executor_params", "KEY=VALUE"),
    (dict(name="slurm", params="timeout_min=sixty"), "--executor_params", "must be int"),
    (dict(name="slurm", params="timeout_min=0"), "--executor_params", "must be positive"),
    (dict(name="slurm", params="timeout_min=60,partitionn=gpu"), "--executor_params",
     "'partitionn' is not a slurm parameter"),
    (dict(name="slurm", params="timeout_min=60,setup=ls"), "--executor_params",
     "set by the runner"),
    (dict(name="local", params="partition=gpu"), "--executor_params", "not a local parameter"),
    (dict(name="local", dry_run=True), "--dry_run", "not both"),
    (dict(name="local", experiment=False), "--executor", "give --experiment"),
    (dict(name=None, params="timeout_min=60"), "--executor_params", "add --executor"),
    (dict(name=None, wait=True), "--wait", "add --executor"),
])
def test_bad_executor_flags_are_refused_naming_the_flag(flags, field, words):
  flags = {"params": None, **flags}
  with pytest.raises(ConfigError) as error:
    jobs.executor_from_flags(flags.pop("name"), flags.pop("params"), **flags)
  assert error.value.field == field and words in str(error.value), str(error.value)


def test_executor_flags_become_submitit_parameters():
  spec = jobs.executor_from_flags(
      "slurm", "timeout_min=240, partition=gpu,slurm_constraint=h100,gpus_per_node=1,"
      "mem_gb=64.5,exclusive=true")
  assert spec == jobs.Executor("slurm", {
      "timeout_min": 240, "slurm_partition": "gpu", "slurm_constraint": "h100",
      "gpus_per_node": 1, "mem_gb": 64.5, "slurm_exclusive": True})
  assert jobs.executor_from_flags("local", None).params == {"timeout_min": jobs.LOCAL_TIMEOUT_MIN}
  assert jobs.executor_from_flags(None, None) is None


def test_launch_refuses_a_bad_executor_flag_before_writing(tmp_path):
  """exit 2, one line naming the flag, and no workdir made."""
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "launch.py", "--experiment=experiments/megabyte.py:cpu",
       f"--workdir={workdir}", "--executor=slurm", "--executor_params=partition=gpu"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "launch.py: config field `--executor_params`: give timeout_min=MINUTES")
  assert not workdir.exists()


FAKE_SLURM = {   # on PATH: submitit finds srun, submits with sbatch, asks sacct for states
    "srun": "#!/bin/sh\nexit 0\n",
    "sbatch": '#!/bin/sh\nn=$(( $(cat "$FAKE_SLURM/last_id" 2>/dev/null || echo 4240) + 1 ))\n'
              'echo $n > "$FAKE_SLURM/last_id"\ncp "$1" "$FAKE_SLURM/sbatch_$n.sh"\n'
              'echo "Submitted batch job $n"\n',
    "sacct": '#!/bin/sh\necho "JobID|State|NodeList"\ncat "$FAKE_SLURM/states"\n',
}


def fake_slurm(tmp_path, monkeypatch):
  """FAKE_SLURM's commands in tmp_path/slurm, first on PATH; sacct reports the lines
  of tmp_path/slurm/states ('ID|STATE|NODE'). Returns that directory."""
  import submitit
  fake = tmp_path / "slurm"
  fake.mkdir()
  for name, text in FAKE_SLURM.items():
    (fake / name).write_text(text)
    (fake / name).chmod(0o755)
  (fake / "states").write_text("")
  monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_SLURM", str(fake))
  submitit.SlurmJob.watcher.clear()
  return fake


def test_slurm_jobs_submitted_left_running_and_resubmitted_when_failed(tmp_path, monkeypatch):
  """Through a fake sbatch/sacct: the first invocation submits one sbatch script per arm
  with the flags' parameters and records its job id; the next, while sacct says one job
  runs and the other failed, resubmits only the failed one."""
  import submitit
  fake = fake_slurm(tmp_path, monkeypatch)
  path, workdir = tmp_path / "two.py", tmp_path / "run"
  path.write_text(EXPERIMENT.format(corpus=tmp_path))
  spec = jobs.executor_from_flags("slurm", "timeout_min=60,partition=gpu,gpus_per_node=1")
  arm = {a: str(run_path(workdir, a)) for a in ("synthetic", "text")}

  first = runner.run_experiment(f"{path}:tiny", str(workdir), executor=spec)
  assert first["jobs"]["submitted"] == [(arm["synthetic"], "4241"), (arm["text"], "4242")]
  script = (fake / "sbatch_4241.sh").read_text()
  for line in ("#SBATCH --partition=gpu", "#SBATCH --time=60", "#SBATCH --gpus-per-node=1",
               "#SBATCH --job-name=mgm-synthetic", f"cd {os.getcwd()}",
               f"export PYTHONPATH={ROOT}$"):
    assert line in script, line
  assert json.loads((run_path(workdir, "synthetic") / "job.json").read_text())["job_id"] == "4241"

  (fake / "states").write_text("4241|RUNNING|node1\n4242|FAILED|node2\n")
  submitit.SlurmJob.watcher.clear()   # its cache; each launch.py is a new process
  second = runner.run_experiment(f"{path}:tiny", str(workdir), executor=spec)["jobs"]
  assert second["submitted"] == [(arm["text"], "4243")]
  [(running, why)] = second["running"]
  assert running == arm["synthetic"] and "job 4241 running" in why
  record = json.loads((run_path(workdir, "text") / "job.json").read_text())
  assert record["job_id"] == "4243" and record["earlier_jobs"] == ["4242"]
  assert "4243" in runner.result_line({"jobs": second})


def test_an_arms_runs_are_one_slurm_job_array(tmp_path, monkeypatch):
  """An arm of several runs (seeds) is one sbatch job array, each run's directory
  recording its array task; the next invocation resubmits only the failed task."""
  import submitit
  fake = fake_slurm(tmp_path, monkeypatch)
  path, workdir = tmp_path / "two.py", tmp_path / "run"
  path.write_text(EXPERIMENT.format(corpus=tmp_path))
  experiment = runner.load(f"{path}:tiny")
  plans = runner.planned_overrides(experiment)
  seed = {(arm.name, k): str(workdir / "arms" / arm.name / f"seed_{k}")
          for arm in experiment.arms for k in (0, 1)}
  runs = [(arm, {**plans[arm.name], "seed": k}, seed[arm.name, k])
          for arm in experiment.arms for k in (0, 1)]
  spec = jobs.executor_from_flags("slurm", "timeout_min=60")
  first = jobs.submit_and_collect(experiment, runs, str(workdir), spec)
  assert first["submitted"] == [(seed["synthetic", 0], "4241_0"), (seed["synthetic", 1], "4241_1"),
                                (seed["text", 0], "4242_0"), (seed["text", 1], "4242_1")]
  assert "#SBATCH --array=0-1" in (fake / "sbatch_4241.sh").read_text()
  assert not (fake / "sbatch_4243.sh").exists()

  (fake / "states").write_text("4241_0|RUNNING|n1\n4241_1|FAILED|n2\n4242_[0-1]|PENDING|\n")
  submitit.SlurmJob.watcher.clear()
  second = jobs.submit_and_collect(experiment, runs, str(workdir), spec)
  assert second["submitted"] == [(seed["synthetic", 1], "4243")]
  assert sorted(d for d, _ in second["running"]) == sorted(
      seed[k] for k in (("synthetic", 0), ("text", 0), ("text", 1)))


def processes_naming(text: str) -> list[int]:
  """Pids of the live processes whose command line contains `text`."""
  pids = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if text.encode() in f.read():
          pids.append(int(pid))
    except OSError:
      pass
  return pids


def test_a_running_local_job_is_left_and_a_killed_one_resubmitted(tmp_path, monkeypatch):
  """Without --wait: a second invocation finds both local jobs running and submits
  nothing; interrupting a job's controller (its job id) ends the job's processes,
  and the arm is then to be resubmitted, with the job named."""
  path, workdir = tmp_path / "two.py", tmp_path / "run"
  write_corpus(tmp_path / "corpus")   # neither job ends by itself before it is interrupted
  path.write_text(EXPERIMENT.format(corpus=tmp_path / "corpus"))
  spec = jobs.executor_from_flags("local", None)
  # A job inherits an ignored SIGINT (pytest started by `... &` in a script ignores it);
  # a handled one is reset to the default in the job.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    first = runner.run_experiment(f"{path}:tiny", str(workdir), executor=spec)["jobs"]
  finally:
    signal.signal(signal.SIGINT, previous)
  second = runner.run_experiment(f"{path}:tiny", str(workdir), executor=spec)["jobs"]
  assert second["submitted"] == [] and len(second["running"]) == 2
  for (directory, job_id), (running, why) in zip(first["submitted"], second["running"]):
    assert running == directory and why == f"job {job_id} running"
    os.kill(int(job_id), signal.SIGINT)   # submitit's LocalJob.cancel
    os.waitpid(int(job_id), 0)            # our child: reaped
  assert processes_naming(str(workdir / "jobs")) == []   # no task outlives its controller
  for directory, job_id in first["submitted"]:
    state, why = jobs.unit_state(directory, 3)
    assert state == "submit" and why.startswith(f"job {job_id} "), why
