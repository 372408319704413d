"""Checkpoint policies: keep the newest N plus the best by eval_bpb; save every K
steps and every M minutes; checksums."""
import datetime
import hashlib
import json
import logging
import os
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections as mlc
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint import checkpoint_managers as policies

from mgm import checkpoint, checksums
from mgm.errors import TrainingError


def ckpt_config(**fields):
  return mlc.ConfigDict(dict(dict(every_steps=2, every_minutes=0.0, keep=2, keep_best=False,
                                  init_from=""), **fields))


def state(step):
  return {"step": jnp.int32(step), "params": {"w": jnp.full((3,), float(step))}}


def test_keep_newest_n_plus_the_best_by_eval_bpb(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), ckpt_config(keep_best=True), enable_async=False)
  for step, bpb in [(2, 3.0), (4, 1.5), (6, 2.0), (8, 2.5), (10, None)]:
    checkpoint.save(mngr, step, state(step), metrics=None if bpb is None else {"eval_bpb": bpb})
  assert mngr.all_steps() == [4, 8, 10]   # best (1.5) + the newest two
  reopened = checkpoint.manager(str(tmp_path), ckpt_config(keep_best=True))
  assert reopened.best_step() == 4, "the metric is saved with the step"


def test_without_keep_best_only_the_newest_n_stay(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), ckpt_config(), enable_async=False)
  for step in (2, 4, 6):
    checkpoint.save(mngr, step, state(step), metrics={"eval_bpb": float(step)})
  assert mngr.all_steps() == [4, 6]


def test_saves_every_k_steps_unless_forced(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), ckpt_config(every_steps=3), enable_async=False)
  saved = [step for step in range(1, 8) if checkpoint.save(mngr, step, state(step),
                                                           force=(step == 7))]
  assert saved == [3, 6, 7]


EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def decide(policy, step, minute, previous=(), saving=False):
  """The policy's decision at `step`, `minute` minutes after the epoch, with
  checkpoints at `previous` [(step, minute)] and maybe a save in flight."""
  info = lambda step, minute: types.SimpleNamespace(
      step=step, time=EPOCH + datetime.timedelta(minutes=minute), metrics=None)
  context = policies.DecisionContext(is_saving_in_progress=saving, reached_preemption=False,
                                     multiprocessing_options=ocp.options.MultiprocessingOptions())
  return policy.should_save(info(step, minute), [info(*p) for p in previous], context=context)


def test_every_minutes_counts_from_the_newest_checkpoint_or_the_start():
  """every_minutes=2.5: not before 2.5 minutes from the start (no save at once)
  or from the newest checkpoint, then yes; deferred while a save is in flight."""
  policy = checkpoint.every_minutes(2.5, start=EPOCH)
  assert not decide(policy, 1, 0.5) and not decide(policy, 2, 2.4)
  assert decide(policy, 3, 2.5)
  assert not decide(policy, 4, 4.9, previous=[(3, 2.5)])
  assert decide(policy, 5, 5.0, previous=[(1, 0.1), (3, 2.5)])
  assert not decide(policy, 5, 5.0, previous=[(3, 2.5)], saving=True)


def test_checksums_cover_every_array_and_refuse_non_finite_values():
  sums = checksums.checksums(state(2), saving_step=2)
  assert set(sums) == {"step", "params/w"}
  assert sums != checksums.checksums(state(3))
  with pytest.raises(TrainingError, match="step 5: `params/w`"):
    checksums.checksums({"params": {"w": jnp.array([jnp.nan])}}, saving_step=5)


def test_a_step_left_half_written_by_a_crash_is_moved_aside_with_a_warning(tmp_path, caplog):
  """Orbax ignores `N.orbax-checkpoint-tmp*`; training moves it to
  checkpoints_unusable/ (never deletes it), so step N can be saved again."""
  mngr = checkpoint.manager(str(tmp_path), ckpt_config(), enable_async=False)
  checkpoint.save(mngr, 2, state(2))
  partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "half").write_bytes(b"cut short")
  with caplog.at_level(logging.WARNING):
    checkpoint.set_aside_partial(mngr)
  assert "checkpoint step 4 " in caplog.text and "left partial" in caplog.text
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  moved = list((tmp_path / checkpoint.UNUSABLE).iterdir())
  assert [m.name.split("-")[0] for m in moved] == ["4.orbax"]
  assert (moved[0] / "state" / "half").read_bytes() == b"cut short"
  assert checkpoint.save(mngr, 4, state(4)) and mngr.all_steps() == [2, 4]


def test_a_save_returns_before_its_checksums_are_hashed_and_deleting_the_state_changes_nothing(
    tmp_path, monkeypatch):
  """The training thread only dispatches host copies: hashing waits here until
  `save` has returned and the saved arrays are deleted (as the next train step
  donates them), yet the sums written are those of the saved values, in
  process_0.json."""
  saved = state(2)
  expected = checksums.checksums(saved)
  hashing_may_start, threads = threading.Event(), []
  real_digest = checksums.digest

  def held_digest(taken, saving_step=None):
    threads.append(threading.current_thread())
    assert hashing_may_start.wait(30), "save() did not return while hashing waited"
    return real_digest(taken, saving_step)
  monkeypatch.setattr(checksums, "digest", held_digest)
  mngr = checkpoint.manager(str(tmp_path), ckpt_config())
  assert checkpoint.save(mngr, 2, saved, force=True)
  for leaf in jax.tree.leaves(saved):   # as the next step's donation does
    leaf.delete()
  hashing_may_start.set()
  mngr.wait_until_finished()
  assert threads and threads[0] is not threading.main_thread()
  written = json.loads((tmp_path / "checkpoints" / "2" / "checksum" / "process_0.json").read_text())
  assert written == expected


def test_a_non_finite_state_fails_its_save_and_no_step_is_written(tmp_path):
  """Found in the background: the step is never finalized and the error is
  raised on the training thread at the next save or wait."""
  mngr = checkpoint.manager(str(tmp_path), ckpt_config())
  checkpoint.save(mngr, 2, state(2), force=True)
  checkpoint.save(mngr, 4, {"step": jnp.int32(4), "params": {"w": jnp.array([1.0, jnp.inf])}},
                  force=True)
  with pytest.raises(TrainingError, match="refusing to checkpoint step 4: `params/w`"):
    mngr.wait_until_finished()
  assert checkpoint.read_only_manager(str(tmp_path / "checkpoints")).all_steps() == [2]


def old_layout_step(directory, step, saved, sums):
  """A step as written before per-host checksums: one JSON item `checksum/metadata`
  of process 0, each array's sha256 under "all"."""
  mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True),
                               item_names=checkpoint.ITEMS)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(saved),
                                          checksum=ocp.args.JsonSave(sums)))
  mngr.wait_until_finished()


def test_a_checkpoint_of_the_old_layout_restores_and_its_whole_array_sums_are_checked(tmp_path):
  whole = lambda a: {"all": hashlib.sha256(np.asarray(a).tobytes()).hexdigest()}
  for step in (2, 4):
    sums = {"step": whole(state(step)["step"]), "params/w": whole(state(step)["params"]["w"])}
    if step == 4:
      sums["params/w"] = whole(state(3)["params"]["w"])   # the step's bytes changed on disk
    old_layout_step(tmp_path / "checkpoints", step, state(step), sums)
  mngr = checkpoint.read_only_manager(str(tmp_path / "checkpoints"))
  restored, step = checkpoint.restore_newest(mngr, checkpoint.abstract(state(0)))
  assert step == 2 and float(restored["params"]["w"][0]) == 2.0
  with pytest.raises(ValueError, match="checksum mismatch in params/w"):
    checkpoint._restore_step(mngr, 4, checkpoint.abstract(state(0)))
