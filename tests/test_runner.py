"""The experiment runner end to end: a tiny two-arm, two-seed experiment, its
runs trained by piping --dry_run's commands to a shell, writes its table (mean ±
std over seeds) and plots; a second invocation skips finished runs and resumes
unfinished ones; a workdir from before seeds is read as seed 0; --dry_run
prints commands that build the very configs the runner trains."""
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags

from experiments import common
from mgm import loop, runner
from mgm.errors import ConfigError
from mgm.validate import validate

from loop_hooks import sigterm_after

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = '''
from mgm.runner import Arm, Experiment

def get_experiment(size="tiny"):   # tiny: two seeds; one: one seed
  quick = {"train.batch_size": 8, "train.warmup_steps": 1, "train.eval_batches": 1,
           "sample.num_samples": 1, "sample.max_new_tokens": 8,
           "eval.continuations": 2, "eval.prompt_tokens": 16, "eval.new_tokens": 8}
  return Experiment(
      name="two", title="Two arms",
      arms=(Arm("flat", "configs/lm.py:tiny", {**quick, "train.steps": 6}, paper=1.0),
            Arm("MegaByte (P=8)", "configs/lm.py:model=megabyte,size=tiny", quick, paper=1.2)),
      match="flops", evals=2, extra_metrics=("chrf",), paper_metric="made up",
      orderings=(("flat", "MegaByte (P=8)"),), seeds=2 if size == "tiny" else 1)
'''

SEEDS = 2
ARMS = (("flat", "flat"), ("MegaByte (P=8)", "megabyte-p-8"))   # name, directory


def launch(*args, **kwargs):
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                        text=True, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(experiment_path, workdir) of the tiny experiment: `launch.py --experiment --dry_run | sh`
  trains the arms, then `launch.py --experiment` finds them done and writes the table."""
  tmp = tmp_path_factory.mktemp("experiment")
  path = tmp / "two.py"
  path.write_text(EXPERIMENT)
  experiment_path, workdir = f"{path}:tiny", tmp / "run"
  dry = launch(f"--experiment={experiment_path}", f"--workdir={workdir}", "--dry_run")
  assert dry.returncode == 0, dry.stderr[-3000:]
  shell = subprocess.run(["sh", "-e"], input=dry.stdout, cwd=ROOT, capture_output=True, text=True)
  assert shell.returncode == 0, shell.stderr[-3000:]
  proc = launch(f"--experiment={experiment_path}", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for seed in (1, 2):
    assert f"arm 1/2 'flat' seed {seed}/2: done" in proc.stderr
    assert f"arm 2/2 'MegaByte (P=8)' seed {seed}/2: done" in proc.stderr
  assert proc.stdout.strip() == f"done: table {workdir / 'results.md'} (results.csv, " \
                                "loss_vs_flops.png and the bar chart beside it)"
  return experiment_path, workdir


def summaries(workdir, arm: str) -> list[dict]:
  """The arm's summary.json of each seed, in seed order."""
  return [json.loads((workdir / "arms" / arm / f"seed_{k}" / "summary.json").read_text())
          for k in range(SEEDS)]


def test_table_and_plots_written(finished):
  experiment_path, workdir = finished
  for name in ("results.md", "results.csv", "results.json", "loss_vs_flops.png", "eval_bpb.png"):
    assert (workdir / name).stat().st_size > 0, name
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [r["arm"] for r in rows] == ["flat", "MegaByte (P=8)"]
  for row, (_, arm) in zip(rows, ARMS):   # mean and sample std over the seeds' summaries
    runs = summaries(workdir, arm)
    assert int(row["seeds"]) == SEEDS
    for metric in ("eval_bpb", "chrf"):
      values = [run[metric] for run in runs]
      assert float(row[metric]) == pytest.approx(np.mean(values), rel=1e-9)
      assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    # trained: below the 8.02 bits of a uniform guess over 259 tokens, above the floor
    for run in runs:
      assert run["entropy_floor_bpb"] < run["eval_bpb"] < math.log2(259)
  # matched FLOPs, by hand (tests/test_flops.py's terms; 8 x 64 tokens a step):
  #   flat: 2 blocks x (24 x 64^2 + 4 x 64 x 32 keys) + unembedding 2 x 64 x 259
  #         = 246,144 x 3 = 738,432 per token, 378,077,184 per step; 6 steps: the budget
  #   MegaByte, per 64-byte sequence: global 2 x 8 patches x (98,304 + 4 x 64 x 4 keys)
  #         = 1,589,248; patch embedding 2 x 512 x 64 x 8 = 524,288; local 1 x 64 x
  #         (98,304 + 4 x 64 x 4) = 6,356,992; context 2 x 64 x 64 x 64 = 524,288;
  #         unembedding 2 x 64 x 259 x 64 = 2,121,728: 11,116,544 x 3 / 64 = 521,088 per
  #         token, 266,797,056 per step; the budget buys 8.50 steps: 9
  assert [int(r["steps"]) for r in rows] == [6, 9]
  assert [float(r["train_flops"]) for r in rows] == [6 * 378_077_184, 9 * 266_797_056]
  table = (workdir / "results.md").read_text()
  flat = summaries(workdir, "flat")
  mean, std = np.mean([r["eval_bpb"] for r in flat]), np.std([r["eval_bpb"] for r in flat],
                                                              ddof=1)
  assert f"| flat | {mean:.4g} ± {std:.2g} |" in table
  assert "flat better than MegaByte (P=8) (paper 1 < 1.2)" in table
  assert f"--experiment={experiment_path}" in table
  record = json.loads((workdir / "results.json").read_text())
  assert (record["size"], record["seeds"]) == ("tiny", SEEDS)
  assert record["orderings"][0]["verdict"] in ("holds", "reversed", "within noise")
  assert f"**{record['orderings'][0]['verdict']}**" in table


def test_the_seeds_differ_in_initialisation_and_data_order(finished):
  """config.seed moves by the seed index: the two seeds' runs are different runs
  (their first training loss differs), on the same evaluation batches."""
  _, workdir = finished
  for _, arm in ARMS:
    first = [json.loads((workdir / "arms" / arm / f"seed_{k}" / "metrics.jsonl").read_text()
                        .splitlines()[0]) for k in range(SEEDS)]
    assert first[0]["train_loss"] != first[1]["train_loss"], arm
    configs = [json.loads((workdir / "arms" / arm / f"seed_{k}" / "config.json").read_text())
               for k in range(SEEDS)]
    assert [c["seed"] for c in configs] == [0, 1]


@pytest.fixture(scope="module")
def resumed(finished, tmp_path_factory):
  """A copy of the finished experiment, run again by `runner.run_experiment` twice: as it is
  (every arm done), then with the flat arm's summary.json removed (as if killed
  before writing it). {'workdir', 'trained': [[arm dirs loop.run_mode trained], ...]
  per invocation, 'result': loop.run_mode's return of the resumed arm, 'before': that
  arm's summary and 'rows': its metrics.jsonl, as they were}."""
  experiment_path, original = finished
  workdir = tmp_path_factory.mktemp("resumed") / "run"
  shutil.copytree(original, workdir)
  unfinished = workdir / "arms" / "flat" / "seed_0"
  before = json.loads((unfinished / "summary.json").read_text())
  rows = (unfinished / "metrics.jsonl").read_text()
  trained, results, real_run = [], [], loop.run_mode

  def spy(config, directory, mode):
    trained[-1].append(directory)
    results.append(real_run(config, directory, mode))
    return results[-1]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop, "run_mode", spy)
    trained.append([])
    runner.run_experiment(experiment_path, str(workdir))
    (unfinished / "summary.json").unlink()
    trained.append([])
    runner.run_experiment(experiment_path, str(workdir))
  return {"workdir": workdir, "trained": trained, "result": results[-1], "before": before,
          "rows": rows}


def test_second_invocation_skips_finished_and_resumes_unfinished(resumed):
  assert resumed["trained"][0] == []                    # every run was finished
  unfinished = resumed["workdir"] / "arms" / "flat" / "seed_0"
  assert resumed["trained"][1] == [str(unfinished)]
  assert (unfinished / "summary.json").exists()
  assert (unfinished / "metrics.jsonl").read_text() == resumed["rows"]   # resumed, not retrained


def test_a_workdir_from_before_seeds_is_read_as_seed_0(finished, tmp_path, monkeypatch):
  """An arm directory holding its run itself (the layout before seeds) is that arm's
  seed 0: a one-seed experiment on it trains nothing and tabulates it, with no
  verdict (one seed)."""
  experiment_path, original = finished
  legacy = tmp_path / "legacy"
  for _, arm in ARMS:
    shutil.copytree(original / "arms" / arm / "seed_0", legacy / "arms" / arm)

  def no_training(*args):
    raise AssertionError(f"trained {args[1]}")
  monkeypatch.setattr(loop, "run_mode", no_training)
  runner.run_experiment(experiment_path.replace(":tiny", ":one"), str(legacy))
  rows = list(csv.DictReader(open(legacy / "results.csv")))
  for row, (_, arm) in zip(rows, ARMS):
    summary = json.loads((legacy / "arms" / arm / "summary.json").read_text())
    assert float(row["eval_bpb"]) == summary["eval_bpb"]
    assert (row["seeds"], row["eval_bpb_std"]) == ("1", "")
  assert "**one seed: no test**" in (legacy / "results.md").read_text()
  assert sorted(os.listdir(legacy / "arms" / "flat")) == sorted(
      os.listdir(original / "arms" / "flat" / "seed_0"))   # no seed_0 folder made beside


def test_a_preempted_arm_stops_the_experiment_with_its_step_saved(tmp_path, monkeypatch):
  """SIGTERM during the first arm: the runner returns {'stopped_by', 'arm'} at once,
  with that arm's step saved; no later arm starts and no table is written (the
  same command then resumes it)."""
  path = tmp_path / "two.py"
  path.write_text(EXPERIMENT)
  workdir = tmp_path / "run"
  sigterm_after(monkeypatch, 1)
  result = runner.run_experiment(f"{path}:tiny", str(workdir))
  assert result == {"stopped_by": "SIGTERM", "arm": "flat", "seed": 0}
  assert os.listdir(workdir / "arms") == ["flat"]
  assert os.listdir(workdir / "arms" / "flat") == ["seed_0"]
  assert os.listdir(workdir / "arms" / "flat" / "seed_0" / "checkpoints") == ["1"]   # every 3
  assert not (workdir / "arms" / "flat" / "seed_0" / "summary.json").exists()
  assert not (workdir / "results.md").exists()


def test_dry_run_commands_build_the_same_configs(tmp_path, capsys, monkeypatch):
  path = tmp_path / "two.py"
  path.write_text(EXPERIMENT)
  experiment = runner.load(f"{path}:tiny")
  runner.run_experiment(f"{path}:tiny", str(tmp_path / "run"), dry_run=True)
  commands = capsys.readouterr().out.splitlines()   # nothing but the commands
  assert len(commands) == len(experiment.arms) * SEEDS
  assert all(shlex.split(c)[:2] == [sys.executable, "launch.py"] for c in commands)
  assert not (tmp_path / "run" / "arms").exists()        # nothing trained
  monkeypatch.chdir(ROOT)
  plans = runner.planned_overrides(experiment)
  runs = [(arm, k) for arm in experiment.arms for k in range(SEEDS)]
  for (arm, k), cmd in zip(runs, commands):
    argv = shlex.split(cmd)[1:]   # as launch.py's absl flags parse them
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    assert values.workdir == str(tmp_path / "run" / "arms" / runner.slug(arm.name) / f"seed_{k}")
    config = runner.arm_config(arm, runner.seed_overrides(plans[arm.name], k))
    assert values.config.to_dict() == config.to_dict()
    assert values.config.seed == k


@pytest.mark.parametrize("body, field", [
    ("return Experiment('x', 'x', arms=())", "arms"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),"
     " Arm('A', 'configs/lm.py:tiny')))", "arms"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),), match='time')",
     "match"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),), seeds=0)", "seeds"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),),"
     " orderings=(('a', 'b'),))", "orderings"),
    ("return Experiment('x', 'x', arms=(Arm('a', 'configs/lm.py:tiny'),"
     " Arm('b', 'configs/lm.py:tiny')), orderings=(('a', 'b', 'bleu'),))", "orderings"),
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


def test_every_metric_row_and_summary_has_an_mfu_of_at_most_one(finished):
  _, workdir = finished
  for arm, k in ((arm, k) for _, arm in ARMS for k in range(SEEDS)):
    directory = workdir / "arms" / arm / f"seed_{k}"
    rows = [json.loads(l) for l in (directory / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((directory / "summary.json").read_text())
    for row in rows[1:] + [summary]:   # the first row's window is empty (compilation)
      assert 0 <= row["mfu"] <= 1.0, (arm, row)
      assert row["mfu"] > 0 or row.get("invocation_tokens") == 0   # a resume that trained none
      assert row["mfu"] == pytest.approx(row["tokens_per_sec"] * summary["flops_per_token"]
                                         / row["peak_flops"])


def _documented_summary_keys() -> set:
  """The keys README.md's summary.json table describes."""
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = readme.split("### summary.json", 1)[1].split("\n#", 1)[0]
  return {key for line in section.splitlines() if line.startswith("| `")
          for key in re.findall(r"`(\w+)`", line.split("|")[1])}


def test_every_summary_key_is_documented_in_the_readme(finished):
  _, workdir = finished
  summary = json.loads((workdir / "arms" / "flat" / "seed_0" / "summary.json").read_text())
  only_distilled = {"distill_teachers"}   # a distilled run's (tests/test_distill.py)
  assert set(summary) == _documented_summary_keys() - only_distilled


def test_a_resumed_arm_reports_the_run_and_this_invocation_apart(resumed):
  """After a resume, wall_s and tokens cover the whole run; invocation_* this one.
  (The flat arm of `resumed`: resumed at its last step, it trains none.)"""
  arm = resumed["workdir"] / "arms" / "flat" / "seed_0"
  before, after = resumed["before"], resumed["result"]
  last_row = json.loads(resumed["rows"].splitlines()[-1])
  assert after == json.loads((arm / "summary.json").read_text())
  assert after["tokens"] == before["tokens"] == 6 * 8 * 64 and after["invocation_tokens"] == 0
  assert after["wall_s"] == pytest.approx(last_row["wall_s"] + after["invocation_wall_s"],
                                          abs=0.5)
  # the first invocation's time up to its last row (compile and 6 steps: seconds) is
  # in the resumed total; what followed that row (final eval, samples) is not counted
  assert last_row["wall_s"] > 1.0 and before["invocation_wall_s"] >= last_row["wall_s"]


class _Books(list):
  """What tfds.data_source returns: records, and the dataset's info."""
  dataset_info = None


def _pg19_books(builder, *args, **kwargs):
  """Four PG-19-shaped books of plain English (TFDS mock data for `paper` sizes: pg19
  is not prepared on a test machine, and validation opens the data source)."""
  text = ("It was the best of times, it was the worst of times. " * 40 + "\n\n") * 8
  books = _Books([{"book_text": text.encode(), "book_title": b"A Tale",
                   "publication_date": b"1859", "url": b""}] * 4)
  books.dataset_info = builder.info
  return books


@pytest.mark.parametrize("size", common.SIZES)
@pytest.mark.parametrize("name", ["adversarial", "granularity", "hourglass", "megabyte",
                                  "scaling", "spacebyte", "conditioning", "multitask",
                                  "distill"])
def test_shipped_experiments_load_and_make_valid_configs(name, size):
  paired = name in ("conditioning", "multitask")   # targets of tens of bytes
  if paired and size == "long":
    with pytest.raises(ConfigError, match="`--experiment`: .* has no .?long.? size"):
      runner.load(f"experiments/{name}.py:{size}")
    return
  experiment = runner.load(f"experiments/{name}.py:{size}")
  plans = runner.planned_overrides(experiment)
  for arm in experiment.arms:
    config = runner.arm_config(arm, plans[arm.name])
    # a student's teachers are runs of this experiment, not trained here: checked
    # as for evaluation (test_distill refuses a missing teacher)
    mode = "eval" if config.distill.teachers else "train"
    if size == "paper" and name != "conditioning":
      with tfds.testing.mock_data(as_data_source_fn=_pg19_books):
        validate(config, mode)
    elif size != "paper":   # conditioning at paper size: COCO, which no test prepares
      validate(config, mode)
    # a checkpoint at least every CHECKPOINT_STEPS steps; paper-size arms also by the clock
    assert config.checkpoint.every_steps <= min(config.train.steps, runner.CHECKPOINT_STEPS)
    assert (config.checkpoint.every_minutes > 0) == (size == "paper")
    if size in ("long", "gpu") and not paired:   # captions keep their length
      assert config.data.seq_len >= 2048
  # scaling: one seed per (model, budget) point, its curve's budgets replicating it
  assert experiment.seeds >= (1 if size == "paper" or name == "scaling" else
                              2 if size == "gpu" else 3)
  if size in common.MINUTES:   # what the size promises, by its estimate
    assert common.estimated_minutes(experiment, size) <= common.MINUTES[size]


def test_arms_name_an_earlier_arms_run_of_the_same_seed(tmp_path):
  """`{arms}` and `{seed}` in an override: the distilled student's seed k reads
  the teachers' seed k, whose arms run before it."""
  experiment = runner.load("experiments/distill.py:cpu")
  todo = runner.runs(experiment, runner.planned_overrides(experiment), str(tmp_path))
  order = [directory for _, _, _, directory in todo]
  for arm, k, overrides, directory in todo:
    for teacher in filter(None, overrides.get("distill.teachers", "").split(",")):
      assert teacher.endswith(f"seed_{k}") and teacher in order
      assert order.index(teacher) < order.index(directory)
  assert sum(bool(o.get("distill.teachers")) for _, _, o, _ in todo) == experiment.seeds


@pytest.mark.parametrize("name", ["granularity", "spacebyte"])
def test_at_long_size_hierarchical_arms_train_more_steps_than_flat(name):
  """At 2048 bytes attention makes the flat model the costliest per byte: at matched
  FLOPs every arm with a coarse level takes more steps than the flat arm."""
  experiment = runner.load(f"experiments/{name}.py:long")
  plans = runner.planned_overrides(experiment)
  flat = plans[experiment.arms[0].name]["train.steps"]
  for arm in experiment.arms[1:]:
    config = runner.arm_config(arm, plans[arm.name])
    if len(config.model.levels) > 1:
      assert plans[arm.name]["train.steps"] > 1.4 * flat, arm.name
