"""A jax.profiler trace of train steps a..b, written to <workdir>/profile
(`--config.profile.steps=a,b`; off when ""), as MaxText's `profiler_steps`.

Steps are counted from 1 like the metrics rows: `2,3` traces the second and the
third step. The trace starts once the steps before a are done and stops once
step b's outputs are ready, so it holds those steps' work and nothing before
them (step 1 also holds compilation: start at 2 or later to see steady steps).
jax writes it as <workdir>/profile/plugins/profile/<run>/<host>.xplane.pb (for
TensorBoard / XProf) and <host>.trace.json.gz (Chrome trace JSON, for Perfetto);
`python -m benchmarks.profile_summary WORKDIR` sums it by op.

The traced steps run slower (the profiler records every Python call on the
host, and step b waits for the trace to be written): the tokens/s and MFU of
the log windows holding them read low.

Multi-host: only process 0 traces (its own devices and host); the other
processes run the same SPMD steps untraced, without waiting on their outputs."""
import os

import jax
from absl import logging

DIRECTORY = "profile"   # under the workdir


def parse_steps(text: str):
  """'a,b' -> (a, b); '' -> None. ValueError (saying why) for anything else;
  the range against train.steps is checked by mgm/validate.py."""
  if not isinstance(text, str):
    raise ValueError(f"must be a string 'a,b' (or '' for off), got {text!r}")
  if not text.strip():
    return None
  parts = [p.strip() for p in text.split(",")]
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise ValueError(f"must be two step numbers 'a,b' (e.g. '5,7'), got {text!r}")
  first, last = int(parts[0]), int(parts[1])
  if first < 1:
    raise ValueError(f"steps count from 1, got first step {first} in {text!r}")
  if first > last:
    raise ValueError(f"the first step {first} is after the last {last} in {text!r}")
  return first, last


def trace_dir(workdir: str) -> str:
  return os.path.join(workdir, DIRECTORY)


class Profiler:
  """Starts a trace before step `first` and stops it after step `last` (steps
  from 1). `enabled=False` (not process 0, or profile.steps="") does nothing.
  A resumed run that starts inside the range traces from its first step."""

  def __init__(self, steps: str, workdir: str, enabled: bool = True):
    self.range = parse_steps(steps) if enabled else None
    self.directory = trace_dir(workdir)
    self.active = False

  def before(self, step: int, state):
    """Called before step `step` (from 1) is dispatched, with the state it reads."""
    if self.range is None or self.active or not self.range[0] <= step <= self.range[1]:
      return
    jax.block_until_ready(state)   # the steps before are not in the trace
    jax.profiler.start_trace(self.directory)
    self.active = True
    logging.info("profiling steps %d to %d into %s", step, self.range[1], self.directory)

  def after(self, step: int, outputs):
    """Called once step `step` is dispatched, with its outputs."""
    if self.active and step >= self.range[1]:
      self.stop(outputs)
      self.range = None   # once

  def stop(self, outputs=None):
    """Ends a trace in progress (waiting for `outputs`): after the last step,
    or when the loop ends early (preemption, an error)."""
    if not self.active:
      return
    jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.active = False
    logging.info("profile written to %s (python -m benchmarks.profile_summary %s)",
                 self.directory, os.path.dirname(self.directory))
