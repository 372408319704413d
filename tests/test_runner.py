"""The experiment runner end to end: a tiny two-arm experiment writes its table
and plots; a second invocation skips finished arms and resumes unfinished ones;
--dry_run prints commands that build the very configs the runner trains."""
import csv
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mgm import loop, runner
from mgm.errors import ConfigError

from loop_hooks import sigterm_after

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = '''
from mgm.runner import Arm, Experiment

def get_experiment(size="tiny"):
  quick = {"train.batch_size": 8, "train.warmup_steps": 1, "train.eval_batches": 1,
           "sample.num_samples": 1, "sample.max_new_tokens": 8,
           "eval.continuations": 2, "eval.prompt_tokens": 16, "eval.new_tokens": 8}
  return Experiment(
      name="two", title="Two arms",
      arms=(Arm("flat", "configs/lm.py:tiny", {**quick, "train.steps": 6}, paper=1.0),
            Arm("MegaByte (P=8)", "configs/lm.py:model=megabyte,size=tiny", quick, paper=1.2)),
      match="flops", evals=2, extra_metrics=("chrf",), paper_metric="made up",
      orderings=(("flat", "MegaByte (P=8)"),))
'''


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(spec, workdir) of the tiny experiment, run once through launch.py."""
  tmp = tmp_path_factory.mktemp("experiment")
  path = tmp / "two.py"
  path.write_text(EXPERIMENT)
  spec, workdir = f"{path}:tiny", tmp / "run"
  proc = subprocess.run([sys.executable, "launch.py", f"--experiment={spec}",
                         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return spec, workdir


def test_table_and_plots_written(finished):
  spec, workdir = finished
  for name in ("results.md", "results.csv", "loss_vs_flops.png", "eval_bpb.png"):
    assert (workdir / name).stat().st_size > 0, name
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [r["arm"] for r in rows] == ["flat", "MegaByte (P=8)"]
  for row in rows:
    assert 0 < float(row["eval_bpb"]) < 9 and float(row["chrf"]) >= 0
  # matched FLOPs: each arm trained for the flat arm's budget, to within one step
  plans = runner.planned_overrides(runner.load(spec))
  budget = float(rows[0]["train_flops"])
  for row, arm in zip(rows, runner.load(spec).arms):
    per_step = runner.flops_per_step(runner.arm_config(arm, plans[arm.name]))
    assert int(row["steps"]) == plans[arm.name]["train.steps"]
    assert abs(float(row["train_flops"]) - budget) <= per_step / 2 + 1
  table = (workdir / "results.md").read_text()
  assert "flat better than MegaByte (P=8) (paper 1 < 1.2)" in table
  assert f"--experiment={spec}" in table


def test_second_invocation_skips_finished_and_resumes_unfinished(finished, monkeypatch):
  spec, workdir = finished
  trained = []
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda c, w, m: trained.append(w) or real_run(c, w, m))
  runner.run(spec, str(workdir))
  assert trained == []                                   # both arms were finished

  unfinished = workdir / "arms" / "megabyte-p-8"
  (unfinished / "summary.json").unlink()                 # as if killed before its summary
  rows_before = (unfinished / "metrics.jsonl").read_text()
  runner.run(spec, str(workdir))
  assert trained == [str(unfinished)]
  assert (unfinished / "summary.json").exists()
  assert (unfinished / "metrics.jsonl").read_text() == rows_before   # resumed, not retrained


def test_a_preempted_arm_stops_the_experiment_with_its_step_saved(tmp_path, monkeypatch):
  """SIGTERM during the first arm: the runner returns {'stopped_by', 'arm'} at once,
  with that arm's step saved; no later arm starts and no table is written (the
  same command then resumes it)."""
  path = tmp_path / "two.py"
  path.write_text(EXPERIMENT)
  workdir = tmp_path / "run"
  sigterm_after(monkeypatch, 1)
  result = runner.run(f"{path}:tiny", str(workdir))
  assert result == {"stopped_by": "SIGTERM", "arm": "flat"}
  assert os.listdir(workdir / "arms") == ["flat"]
  assert os.listdir(workdir / "arms" / "flat" / "checkpoints") == ["1"]   # every_steps is 3
  assert not (workdir / "arms" / "flat" / "summary.json").exists()
  assert not (workdir / "results.md").exists()


def test_dry_run_commands_build_the_same_configs(tmp_path, capsys, monkeypatch):
  path = tmp_path / "two.py"
  path.write_text(EXPERIMENT)
  experiment = runner.load(f"{path}:tiny")
  runner.run(f"{path}:tiny", str(tmp_path / "run"), dry_run=True)
  commands = [c for c in capsys.readouterr().out.splitlines() if c.startswith("python ")]
  assert len(commands) == len(experiment.arms)
  assert not (tmp_path / "run" / "arms").exists()        # nothing trained
  monkeypatch.chdir(ROOT)
  plans = runner.planned_overrides(experiment)
  for arm, cmd in zip(experiment.arms, commands):
    argv = shlex.split(cmd)[1:]   # as launch.py's absl flags parse them
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    assert values.workdir == str(tmp_path / "run" / "arms" / runner.slug(arm.name))
    assert values.config.to_dict() == runner.arm_config(arm, plans[arm.name]).to_dict()


@pytest.mark.parametrize("body, field", [
    ("return Experiment('x', 'x', arms=())", "arms"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),"
     " Arm('A', 'configs/lm.py:tiny')))", "arms"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),), match='time')",
     "match"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),),"
     " orderings=(('a', 'b'),))", "orderings"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny',"
     " {'model.levels[0].nope': 1}),))", "a: model.levels[0].nope"),
])
def test_bad_experiments_name_the_field(tmp_path, body, field):
  path = tmp_path / "bad.py"
  path.write_text("from mgm.runner import Arm, Experiment\n"
                  f"def get_experiment(size=None):\n  {body}\n")
  with pytest.raises(ConfigError, match=re.escape(f"config field `{field}`")):
    runner.planned_overrides(runner.load(str(path)))


def test_missing_experiment_file():
  with pytest.raises(ConfigError, match="`--experiment`: no file"):
    runner.load("experiments/does_not_exist.py:cpu")
