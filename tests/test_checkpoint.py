"""Checkpoint policies: keep the newest N plus the best by eval_bpb; save every K
steps and every M minutes; checksums."""
import datetime
import logging
import os
import time
import types

import jax.numpy as jnp
import ml_collections as mlc
import pytest

from mgm import checkpoint
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


def test_every_minutes_counts_from_the_newest_checkpoint_or_the_start():
  policy = checkpoint.EveryMinutes(0.5 / 60)   # half a second
  now = lambda: datetime.datetime.now(tz=datetime.timezone.utc)
  info = lambda step, t: types.SimpleNamespace(step=step, time=t, metrics=None)
  context = None   # unused by the policy
  assert not policy.should_save(info(1, now()), [], context=context)
  time.sleep(0.6)
  assert policy.should_save(info(2, now()), [], context=context)
  assert not policy.should_save(info(3, now()), [info(2, now())], context=context)


def test_checksums_cover_every_array_and_refuse_non_finite_values():
  sums = checkpoint.checksums(state(2), saving_step=2)
  assert set(sums) == {"step", "params/w"}
  assert sums != checkpoint.checksums(state(3))
  with pytest.raises(TrainingError, match="step 5: `params/w`"):
    checkpoint.checksums({"params": {"w": jnp.array([jnp.nan])}}, saving_step=5)


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
