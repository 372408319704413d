"""The README's checkpoint and mode promises, kept through the real train loop
(mgm.loop.run_mode in this process, `tiny` configs of a few steps):

- the final step is saved even when it is not a multiple of checkpoint.every_steps;
- checkpoint.keep_best keeps the step of lowest eval_bpb beside the newest `keep`;
- checkpoint.every_minutes saves on a (controlled) clock;
- checkpoint.init_from starts from another run's parameters, and the workdir's own
  checkpoints win once it has some;
- --mode=eval and --mode=sample restore the newest checkpoint;
- a batch with more units than a level's max_units stops training with the field named.
"""
import json
import logging
import os
from pathlib import Path

import pytest

from configs.lm import get_config
from mgm import checkpoint, loop
from mgm import validate as validate_lib
from mgm.errors import ConfigError

from loop_hooks import FakeClock, after_each_step

STEPS = 7   # not a multiple of every_steps=2: the final checkpoint is the forced one


def tiny(steps=STEPS, **train):
  config = get_config("tiny")
  config.train.update(steps=steps, log_every=1, **train)
  return config


def rows(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def saved_steps(workdir):
  ckpts = Path(workdir) / "checkpoints"
  return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) if ckpts.is_dir() else []


def best_config():
  """keep=1 plus keep_best, evaluated every 2 steps. lr=0.3 with one warmup step
  makes training diverge after step 2, so the best step is not the newest."""
  config = tiny(eval_every=2, lr=0.3, warmup_steps=1)
  config.checkpoint.update(every_steps=2, keep=1, keep_best=True)
  return config


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("best")
  loop.run_mode(best_config(), str(workdir), "train")
  return workdir


def test_the_final_step_is_saved_though_not_a_multiple_of_every_steps(best_run):
  assert [r["step"] for r in rows(best_run)] == list(range(1, STEPS + 1))
  assert STEPS in saved_steps(best_run)


def test_keep_best_keeps_the_step_of_lowest_eval_bpb_beside_the_newest(best_run):
  evals = {r["step"]: r["eval_bpb"] for r in rows(best_run) if "eval_bpb" in r}
  assert sorted(evals) == [2, 4, 6, 7]
  best = min(evals, key=evals.get)
  assert best != STEPS, f"precondition: the best step is not the newest ({evals})"
  assert saved_steps(best_run) == [best, STEPS]   # keep=1 alone would leave [7]


def test_eval_mode_restores_the_newest_checkpoint(best_run):
  """The newest step's eval_bpb, as the run measured it with its own parameters
  (summary.json), is what --mode=eval measures after restoring them."""
  result = loop.run_mode(best_config(), str(best_run), "eval")
  summary = json.loads((best_run / "summary.json").read_text())
  assert result["step"] == STEPS
  assert result["eval_bpb"] == summary["eval_bpb"]
  written = json.loads((best_run / f"eval_step_{STEPS}.json").read_text())
  assert written["eval_bpb"] == summary["eval_bpb"]


def test_sample_mode_restores_the_newest_checkpoint(best_run):
  """Samples are keyed by sample.seed and the step: --mode=sample on the restored
  parameters writes what training wrote from its parameters in memory."""
  texts = loop.run_mode(best_config(), str(best_run), "sample")
  samples = best_run / "samples"
  assert len(texts) == best_config().sample.num_samples
  assert ((samples / f"sample_step_{STEPS}_seed_0.txt").read_text()
          == (samples / f"step_{STEPS}.txt").read_text())


def test_every_minutes_saves_on_the_clock_counted_from_the_newest_checkpoint(
    tmp_path, monkeypatch):
  """One minute passes per step (fake clock), every_minutes=2.5: saves after steps
  3 and 6 (each 3 minutes after the start or the previous save), and the final 7.
  Each save completes before the next step: a save still being written defers a
  timed one (Orbax's ContinuousCheckpointingPolicy), and tiny steps are quicker."""
  clock = FakeClock(monkeypatch)
  after_each_step(monkeypatch, lambda step: clock.advance(1.0))
  save = checkpoint.save

  def save_and_wait(mngr, *args, **kwargs):
    saved = save(mngr, *args, **kwargs)
    mngr.wait_until_finished()
    return saved
  monkeypatch.setattr(checkpoint, "save", save_and_wait)
  config = tiny(eval_every=100)
  config.checkpoint.update(every_steps=100, every_minutes=2.5, keep=10)
  loop.run_mode(config, str(tmp_path), "train")
  assert saved_steps(tmp_path) == [3, 6, STEPS]


def test_init_from_takes_the_other_runs_parameters_until_the_workdir_has_its_own(
    best_run, tmp_path, caplog):
  """Step 1's learning rate is 0 (linear warmup from 0), so the eval after step 1
  measures the parameters the run started from: the source's newest step's.
  Run again with more steps, the workdir's own checkpoint wins over init_from:
  the run resumes (nothing is logged again) instead of starting over."""
  source = {r["step"]: r for r in rows(best_run)}
  config = tiny(steps=2, eval_every=1, warmup_steps=2)
  config.checkpoint.update(init_from=str(best_run), every_steps=1)
  loop.run_mode(config, str(tmp_path), "train")
  first = rows(tmp_path)
  assert first[0]["lr"] == 0.0, "precondition: the first update changes nothing"
  assert first[0]["eval_bpb"] == source[STEPS]["eval_bpb"]
  assert first[0]["train_loss"] != source[1]["train_loss"], "not the fresh initialization"

  config.train.steps = 3
  with caplog.at_level(logging.INFO):
    loop.run_mode(config, str(tmp_path), "train")
  assert "resumed from step 2" in caplog.text
  assert rows(tmp_path)[:2] == first and [r["step"] for r in rows(tmp_path)] == [1, 2, 3]
  assert not list(tmp_path.glob("metrics-*.jsonl")), "no row was dropped and logged again"


def test_more_units_than_max_units_stops_training_naming_the_field(tmp_path, monkeypatch):
  """spacebyte's word level with max_units=2 on 64-byte sequences (about a dozen
  words each). Validation refuses it from the first batch (tests/test_validate.py);
  here that check is switched off, as for a later batch that overflows, so the
  train loop's own check must stop the run at its first log step, nothing saved."""
  monkeypatch.setattr(validate_lib, "_validate_units", lambda config, spec: None)
  config = get_config("model=spacebyte,size=tiny")
  config.train.update(steps=3, log_every=1, warmup_steps=1)
  config.model.levels[0].max_units = 2
  with pytest.raises(ConfigError, match=r"model\.levels\[0\]\.max_units.*before step 1"):
    loop.run_mode(config, str(tmp_path), "train")
  assert saved_steps(tmp_path) == []
