"""Preemption: SIGTERM or SIGINT finishes the current step, saves, and exits 0.

One process: a signal handler sets a flag, checked after every step; a second
signal gets the default behaviour back (Ctrl-C twice quits at once).
Several processes: the hosts must stop at the same step, so JAX's preemption
sync point decides (JAX's preemption service catches SIGTERM on any host and
agrees on a step that every host reaches); no Python handler is installed then,
which would replace JAX's.
"""
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  """`with Preemption() as p: ... if p.reached(step): save and stop`."""

  def __init__(self):
    self.signal = None        # the name of the signal received, e.g. 'SIGTERM'
    self.received_at = None   # time.time() when it arrived
    self._multihost = jax.process_count() > 1
    self._previous = {}

  def __enter__(self):
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
    return self

  def __exit__(self, *exc):
    self._restore_handlers()

  def _restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal, self.received_at = signal.Signals(signum).name, time.time()
    self._restore_handlers()

  def reached(self, step: int) -> bool:
    """True once this step is where every process stops. Call it after every step."""
    if not self._multihost:
      return self.signal is not None
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:   # JAX's preemption service is switched off
      return False
    if reached and self.signal is None:
      self.signal, self.received_at = "preemption notice", time.time()
    return reached
