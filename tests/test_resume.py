"""Runs that survive: kill -9 and resume, damaged checkpoints, SIGTERM, non-finite steps.

Resumed runs are compared with an uninterrupted one bit for bit: every
metrics.jsonl row but tokens/s, summary.json's eval_bpb, and the sha256 of
every array of the final checkpoint (params and optimizer state).
"""
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.lm import get_config
from mgm import checkpoint, checksums, loop, train
from mgm import setup as setup_lib
from mgm.data import pipeline
from mgm.errors import ConfigError, TrainingError

from loop_hooks import Crash, crash_after

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
RUN = [f"--config.train.steps={STEPS}",
       "--config.train.log_every=1", "--config.train.eval_every=4",
       "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3"]
RECURRENT = "model=megabyte_lstm,size=tiny"   # an LSTM local model under a global one
CAPTION = "configs/caption.py:tiny"            # an image encoder, a cross-attending decoder


def tiny_config(**train):
  config = get_config("tiny")
  config.train.update(steps=STEPS, log_every=1, eval_every=4, **train)
  config.checkpoint.update(every_steps=2, keep=3)
  return config


def start(workdir, *extra, preset="tiny"):
  """launch.py on `preset` (of configs/lm.py, or 'configs/FILE.py:PRESET')."""
  config = preset if ".py:" in preset else f"configs/lm.py:{preset}"
  return subprocess.Popen([sys.executable, "launch.py", f"--config={config}", *RUN,
                           f"--workdir={workdir}", *extra],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def launch(workdir, *extra, preset="tiny"):
  proc = start(workdir, *extra, preset=preset)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def rows(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def wait_for_step(proc, workdir, step, timeout=240) -> int:
  """Poll metrics.jsonl until a row with step >= `step`; the newest step seen."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-3000:]}"
    try:
      newest = max(r["step"] for r in rows(workdir))
    except (OSError, ValueError):   # no file yet, or a row half written
      newest = 0
    if newest >= step:
      return newest
    time.sleep(0.01)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def final_checksums(workdir, step=STEPS):
  checksum = Path(workdir) / "checkpoints" / str(step) / "checksum"
  return json.loads((checksum / "process_0.json").read_text())


# wall clock: differs run to run
SPEED = ("tokens_per_sec", "tflops_per_sec", "mfu", "peak_flops", "wall_s")


def without_speed(table):
  return [{k: v for k, v in row.items() if k not in SPEED} for row in table]


def assert_same_run(workdir, reference):
  assert [r["step"] for r in rows(workdir)] == list(range(1, STEPS + 1))
  assert without_speed(rows(workdir)) == without_speed(rows(reference))
  summary = json.loads((Path(workdir) / "summary.json").read_text())
  assert summary["eval_bpb"] == json.loads((reference / "summary.json").read_text())["eval_bpb"]
  assert final_checksums(workdir) == final_checksums(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  launch(workdir)
  return workdir


def interrupt(workdir, at_step, sig, preset="tiny", extra=()):
  """Start the run, send `sig` once a row for `at_step` (or later) is logged;
  (the newest step logged then, the process's stdout, seconds from signal to exit)."""
  proc = start(workdir, *extra, preset=preset)
  reached = wait_for_step(proc, workdir, at_step)
  sent = time.time()
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  exit_s = time.time() - sent
  expected = 0 if sig == signal.SIGTERM else -sig
  assert proc.returncode == expected, err[-3000:]
  return reached, out, exit_s


@pytest.mark.slow   # ~2.5 min: run by CI (.ci/run) after the default suite
def test_kill_9_three_times_and_sigterm_then_resume_equals_an_uninterrupted_run_bit_for_bit(
    reference, tmp_path):
  """kill -9 after steps 3, 8 and 13 and SIGTERM after step 5 (each run resuming the
  last); then the newest checkpoint's bytes are flipped, so the final run falls
  back to the one before. The result equals the uninterrupted run's."""
  workdir = tmp_path / "run"
  killed = [interrupt(workdir, 3, signal.SIGKILL)[0]]
  reached, out, exit_s = interrupt(workdir, 5, signal.SIGTERM)
  stopped = max(r["step"] for r in rows(workdir))
  assert f"stopped by SIGTERM after step {stopped:,} (saved)" in out   # launch.py's last line
  assert str(stopped) in os.listdir(workdir / "checkpoints"), "saved at the step reached"
  assert exit_s < 30
  killed += [interrupt(workdir, step, signal.SIGKILL)[0] for step in (8, 13)]
  newest = max(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  damage_flip(workdir / "checkpoints" / str(newest))
  _, err = launch(workdir)
  print(f"kill -9 after steps {killed}; SIGTERM after step {reached}: saved step {stopped}, "
        f"exit {exit_s:.2f} s after the signal; flipped bytes in step {newest}")
  assert f"checkpoint step {newest} " in err and "unusable" in err
  assert_same_run(workdir, reference)
  assert list(workdir.glob("metrics-*.jsonl")), "rows logged again after resuming are kept aside"
  assert any(n.startswith(f"{newest}-") for n in os.listdir(workdir / checkpoint.UNUSABLE))


def kill_twice_and_resume(tmp_path, preset, extra=()):
  """An uninterrupted run of `preset` (with `extra` flags), and one killed with -9
  after steps 3 and 9 and then run to the end; asserts they are the same run.
  (run, reference) dirs."""
  reference = tmp_path / "reference"
  launch(reference, *extra, preset=preset)
  workdir = tmp_path / "run"
  killed = [interrupt(workdir, step, signal.SIGKILL, preset, extra)[0] for step in (3, 9)]
  launch(workdir, *extra, preset=preset)
  print(f"kill -9 after steps {killed}")
  assert_same_run(workdir, reference)
  return workdir, reference


@pytest.mark.slow   # ~1.5 min: run by CI (.ci/run) after the default suite
def test_kill_9_of_a_recurrent_preset_then_resume_equals_an_uninterrupted_run(tmp_path):
  """The LSTM local model (its parameters inside a scan) resumes bit for bit too."""
  kill_twice_and_resume(tmp_path, RECURRENT)


@pytest.mark.slow   # ~1.5 min: run by CI (.ci/run) after the default suite
def test_kill_9_of_a_captioning_run_then_resume_equals_an_uninterrupted_run(tmp_path):
  """Encoders, cross-attention and the paired data's position resume bit for bit
  (and the held-out captions scored at the end are the same)."""
  workdir, reference = kill_twice_and_resume(tmp_path, CAPTION)
  summaries = [json.loads((w / "summary.json").read_text()) for w in (workdir, reference)]
  assert summaries[0]["heldout_bleu"] == summaries[1]["heldout_bleu"]
  assert ((workdir / "outputs" / f"step_{STEPS}.jsonl").read_text()
          == (reference / "outputs" / f"step_{STEPS}.jsonl").read_text())


@pytest.mark.slow   # ~1.5 min: run by CI (.ci/run) after the default suite
def test_kill_9_of_an_adversarial_run_then_resume_equals_an_uninterrupted_run(tmp_path):
  """The discriminator's parameters and its own optimizer state are in the
  checkpoint (final_checksums covers them), and its Gumbel noise is keyed by
  the step: both players resume bit for bit, and the logged adversarial losses
  are the same rows."""
  workdir, _ = kill_twice_and_resume(tmp_path, "tiny", ("--config.adversarial.weight=0.1",))
  checksums = final_checksums(workdir)
  assert any(name.startswith("adversarial/opt_state") for name in checksums), sorted(checksums)
  assert "adv_discriminator" in rows(workdir)[-1]


def test_a_crashed_run_resumes_to_the_uninterrupted_result_bit_for_bit(
    reference, tmp_path, monkeypatch):
  """In this process (the default run's resume check; the kill -9 test is slow):
  the run dies after step 5's row is written, the newest checkpoint being step 4;
  the same command resumes there, logs step 5 again and ends where the
  uninterrupted run (launch.py) does: every row, eval_bpb, every array's bytes."""
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    crash_after(patch, 5)
    with pytest.raises(Crash):
      loop.run_mode(tiny_config(), str(workdir), "train")
  assert [r["step"] for r in rows(workdir)] == [1, 2, 3, 4, 5]
  assert checkpoint.read_only_manager(str(workdir / "checkpoints")).all_steps() == [2, 4]
  loop.run_mode(tiny_config(), str(workdir), "train")
  assert_same_run(workdir, reference)
  kept = list(workdir.glob("metrics-*.jsonl"))   # the file as it was before resuming
  assert len(kept) == 1
  assert [json.loads(line)["step"] for line in kept[0].read_text().splitlines()] == [1, 2, 3, 4, 5]


def damage_truncate(step_dir):
  biggest = max((step_dir / "state").rglob("*"), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:100])


def damage_delete(step_dir):
  shutil.rmtree(step_dir / "state" / "ocdbt.process_0")


def damage_flip(step_dir):
  """Flip 8 bytes inside the biggest (zstd-compressed) array file. Orbax notices
  nothing most of the time (20 of 20 random places in one measurement): only
  the checksum does."""
  biggest = max((step_dir / "state").rglob("*"), key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
  biggest.write_bytes(bytes(data))


def damage_swap(step_dir):
  """A well-formed step whose arrays are another step's: only the checksum can tell."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / str(int(step_dir.name) - 2) / "state", step_dir / "state")


def damage_data_position(step_dir):
  """The data iterator's position, one number changed (valid JSON, silently wrong)."""
  path = next((step_dir / "data").glob("process_0*.json"))
  text = path.read_text()
  path.write_text(text.replace('"next_index": ', '"next_index": 1', 1))


@pytest.fixture(scope="module")
def tiny_setup():
  return setup_lib.Setup.create(tiny_config())


@pytest.fixture(scope="module")
def abstract_state(tiny_setup):
  return checkpoint.abstract(tiny_setup.state)


# A failed Orbax restore leaves TensorStore reads that are never awaited; pytest
# reports them when they are garbage collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage,what", [
    (damage_truncate, ""), (damage_delete, ""), (damage_flip, "checksum mismatch"),
    (damage_swap, "checksum mismatch"), (damage_data_position, "checksum mismatch")])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(
    reference, abstract_state, tmp_path, caplog, damage, what):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  damage(workdir / "checkpoints" / str(STEPS))
  config = tiny_config()
  data_iter = iter(pipeline.make_dataset(config.data, "train", batch_size=8, seed=config.seed))
  mngr = checkpoint.manager(str(workdir), config.checkpoint)
  with caplog.at_level(logging.WARNING):
    state, step = checkpoint.restore_newest(mngr, abstract_state, data_iter, move_aside=True)
  assert step == STEPS - 2 and int(state.step) == STEPS - 2
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert f"checkpoint step {STEPS} " in warning and "unusable" in warning and what in warning
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(STEPS - 4), str(STEPS - 2)]
  moved = os.listdir(workdir / checkpoint.UNUSABLE)
  assert len(moved) == 1 and moved[0].startswith(f"{STEPS}-"), "moved aside, not deleted"


def test_init_from_another_run_takes_its_parameters_with_a_fresh_optimizer(
    reference, tiny_setup, tmp_path):
  config = tiny_config()
  config.checkpoint.init_from = str(reference)
  setup = dataclasses.replace(tiny_setup, config=config)
  state, step = loop._initial_state(setup, checkpoint.manager(str(tmp_path), config.checkpoint),
                                    None)
  assert step == 0 and int(state.step) == 0
  params = checksums.checksums({"params": state.params})
  assert params == {k: v for k, v in final_checksums(reference).items() if k in params}
  assert checksums.checksums(state.opt_state) == checksums.checksums(tiny_setup.state.opt_state)


def test_init_from_a_model_of_other_shapes_lists_the_parameters_that_differ(
    reference, abstract_state):
  flat = traverse_util.flatten_dict(abstract_state.params, sep="/")
  flat["embed/embedding"] = jax.ShapeDtypeStruct((300, 64), jnp.float32)
  flat["extra/kernel"] = jax.ShapeDtypeStruct((2, 2), jnp.float32)
  del flat["final_norm/scale"]
  with pytest.raises(ConfigError) as error:
    checkpoint.restore_params(str(reference), traverse_util.unflatten_dict(flat, sep="/"))
  message = str(error.value)
  assert error.value.field == "checkpoint.init_from"
  assert "`embed/embedding` is (" in message and "but (300, 64) here" in message
  assert "missing there: extra/kernel" in message and "only there: final_norm/scale" in message


def test_launch_refuses_init_from_a_model_of_other_shapes(reference, tmp_path):
  proc = start(tmp_path / "w", f"--config.checkpoint.init_from={reference}",
               "--config.model.levels[0].width=32")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "Traceback" not in err
  assert "`checkpoint.init_from`" in err and "`embed/embedding` is (" in err


def poisoned_train_step(bad_steps):
  """make_train_step whose batch mask is NaN (so the loss is) at `bad_steps`."""
  def make(model, tx, *args, **kwargs):
    step_fn = train.make_train_step(model, tx, *args, **kwargs)

    def poisoned(state, batch):
      bad = jnp.isin(state.step, jnp.asarray(bad_steps))
      return step_fn(state, {**batch, "mask": jnp.where(bad, jnp.nan, batch["mask"])})
    return poisoned
  return make


def test_non_finite_steps_are_skipped_and_counted_and_too_many_in_a_row_stop_the_run(
    abstract_state, tmp_path, monkeypatch):
  """NaN losses at steps 3-4 (two in a row: skipped, the run goes on) and 9-11
  (three in a row, more than max_nonfinite_in_a_row=2: the run stops)."""
  monkeypatch.setattr(setup_lib, "make_train_step", poisoned_train_step([2, 3, 8, 9, 10]))
  with pytest.raises(TrainingError, match="3 steps in a row up to step 11.*max_nonfinite_in_a_row=2"):
    loop.train(tiny_config(max_nonfinite_in_a_row=2), str(tmp_path))
  table = {r["step"]: r for r in rows(tmp_path)}
  assert [table[s]["skipped_steps"] for s in (2, 3, 4, 5, 8, 9, 10, 11)] == [0, 1, 2, 2, 2, 3, 4, 5]
  assert np.isnan(table[3]["train_loss"]) and np.isnan(table[4]["train_loss"])
  assert all(np.isfinite(table[s]["train_loss"]) for s in (5, 6, 7, 8))
  assert table[8]["train_loss"] < table[2]["train_loss"], "training went on between"
  mngr = checkpoint.read_only_manager(str(tmp_path / "checkpoints"))
  assert mngr.all_steps() == [6, 8, 10]
  for step in mngr.all_steps():
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state))).state
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_a_non_finite_state_is_never_saved():
  state = {"params": {"w": jnp.array([1.0, jnp.inf])}}
  with pytest.raises(TrainingError, match="params/w"):
    checksums.checksums(state, saving_step=7)
