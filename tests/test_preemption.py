"""Preemption: a signal flag on one process; JAX's preemption sync point on several."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgm.preemption import Preemption

ROOT = Path(__file__).resolve().parents[1]


def test_one_process_stops_after_a_signal_and_a_second_one_acts_at_once():
  # Python's own SIGINT handler before, as in a foreground process (one started
  # with `&` from a script inherits SIGINT ignored, and so would a second signal be)
  prior = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with Preemption() as preempt:
      assert not preempt.reached(1)
      os.kill(os.getpid(), signal.SIGINT)
      assert preempt.reached(2) and preempt.signal == "SIGINT"
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "handlers are put back"
  finally:
    signal.signal(signal.SIGINT, prior)


# Two processes in lockstep (a barrier per step, as a train step's collectives
# would be); SIGTERM reaches one of them only.
WORKER = """
import sys, time
import jax
from jax.experimental import multihost_utils
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from mgm.preemption import Preemption
with Preemption() as preempt:
  for step in range(1, 2000):
    time.sleep(0.02)
    multihost_utils.sync_global_devices(f"step {step}")
    multihost_utils.reached_preemption_sync_point(step)   # Orbax's should_save asks too
    if preempt.reached(step):
      print(f"stopped at step {step}", flush=True)
      break
"""


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  time.sleep(10)   # both joined and stepping
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=60) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  stops = [[line for line in out.splitlines() if line.startswith("stopped at step")]
           for out, _ in outs]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
