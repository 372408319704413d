"""Hooks into the real train loop for tests: act right after a step (send a
signal, crash, move a clock), and a clock the checkpoint policies read.

Nothing here replaces a computation: the loop, its train step, its checkpoint
manager and Orbax's policies run as in a real run.
"""
import datetime
import os
import signal
import types

from orbax.checkpoint import checkpoint_manager as orbax_manager

from mgm import checkpoint, loop


class Crash(RuntimeError):
  """Raised by `crash_after`: the process dies between two steps (as kill -9 would,
  except that buffered writes are flushed)."""


def after_each_step(monkeypatch, action):
  """Call `action(step)` after every train step, once the step is trained and its
  metrics row written, before it is (maybe) checkpointed and before the loop
  asks whether a preemption signal arrived."""
  real_log = loop.Trainer.log

  def log(self, state, metrics, step, bar):
    evaluated = real_log(self, state, metrics, step, bar)
    action(step)
    return evaluated
  monkeypatch.setattr(loop.Trainer, "log", log)


def sigterm_after(monkeypatch, at_step: int):
  """The process receives SIGTERM right after `at_step` (the loop's handler catches it)."""
  def action(step):
    if step == at_step:
      # the loop's handler must be in place, or the signal would end the test process
      assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
      os.kill(os.getpid(), signal.SIGTERM)
  after_each_step(monkeypatch, action)


def crash_after(monkeypatch, at_step: int):
  """`Crash` is raised right after `at_step`'s metrics row is written."""
  def action(step):
    if step == at_step:
      raise Crash(f"crashed after step {at_step}")
  after_each_step(monkeypatch, action)


class FakeClock:
  """The wall clock that mgm.checkpoint's every_minutes start and Orbax's
  CheckpointManager read (`datetime.datetime.now`), moved by hand in minutes."""

  EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

  def __init__(self, monkeypatch):
    self.minutes = 0.0
    clock = self

    class Datetime(datetime.datetime):
      @classmethod
      def now(cls, tz=None):
        return (clock.EPOCH + datetime.timedelta(minutes=clock.minutes)).astimezone(tz)

    fake = types.SimpleNamespace(datetime=Datetime, timezone=datetime.timezone,
                                 timedelta=datetime.timedelta)
    for module in (checkpoint, orbax_manager):
      monkeypatch.setattr(module, "datetime", fake)

  def advance(self, minutes: float):
    self.minutes += minutes
