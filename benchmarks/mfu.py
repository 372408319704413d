"""Training MFU of a preset on this machine's accelerator(s), as one JSON line.

  python -m benchmarks.mfu --config=configs/lm.py:base --config.train.batch_size=8

Builds the run exactly as launch.py does (mgm.setup.Setup: sharded state on the
config's mesh, the pjit-ed train step with donation), then times `--steps`
train steps on one synthetic-corpus batch after two warm-up steps. MFU is the
analytic model FLOPs of mgm/flops.py (remat's recomputation not counted) over
the datasheet peak of the devices; `executed_tflops_per_sec` counts what the
kernels run (full attention squares), as XLA's cost analysis does.

`--profile=FILE` then traces two more steps with jax.profiler (in the same
process, so the step is compiled once) into FILE.trace/ and writes their
summary by op (benchmarks/profile_summary.py) to FILE as Markdown.
"""
import datetime
import json
import os
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import profile_summary
from mgm import batches, flops
from mgm.setup import Setup
from mgm.train import param_count

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON line to this file")
_PROFILE = flags.DEFINE_string("profile", "", "Trace two more steps; their summary by op to "
                               "this Markdown file")


def time_steps(setup: Setup, state, batch, steps: int):
  """(seconds per train step after two warm-up steps (the first compiles), the
  state after them: the step donates its input state)."""
  for _ in range(2):
    state, metrics = setup.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = setup.train_step(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state


def profile_steps(setup: Setup, state, batch, path: str, record: dict, steps: int = 2):
  """Traces `steps` train steps into `path`.trace/ and writes the trace's summary
  by op (profile_summary.format_summary) to `path`, under a heading naming the
  run (`record`, the MFU line, in full below it)."""
  directory = path + ".trace"
  jax.block_until_ready(state)
  jax.profiler.start_trace(directory)
  for _ in range(steps):
    state, metrics = setup.train_step(state, batch)
  jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  summary = profile_summary.format_summary(profile_summary.summarize(directory), top=15)
  r = record
  title = (f"# Profile: {len(r['widths'])} level(s) {r['widths']} x {r['depths']}, batch "
           f"{r['batch']} x {r['seq_len']}, {r['dtype']}, {r['attention_impl']} attention, "
           f"on {r['devices']} x {r['device']}")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"{title}\n\n{r['step_s']} s a step, MFU {r['mfu']:.1%} ({r['date']}); "
            f"{steps} more steps traced.\n\n```json\n{json.dumps(r)}\n```\n\n{summary}\n")


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.perf_counter()
  setup = Setup.create(config)
  placement = setup.placement
  batch = placement.global_batch(next(iter(batches.train_stream(config, placement, seed=0))))
  step_s, state = time_steps(setup, setup.state, batch, _STEPS.value)
  tokens_per_sec = setup.tokens_per_step / step_s
  executed = flops.train_flops_per_token(setup.model.spec, config.data.seq_len, executed=True)
  memory = jax.devices()[0].memory_stats() or {}
  speed = setup.speed(tokens_per_sec, 0)
  record = {
      "bench": "mfu", "date": datetime.date.today().isoformat(),
      "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "devices": jax.device_count(),
      "mesh": dict(placement.mesh.shape), "levels": len(config.model.levels),
      "widths": [l.width for l in config.model.levels],
      "depths": [l.depth for l in config.model.levels],
      "batch": config.train.batch_size, "seq_len": config.data.seq_len,
      "dtype": config.model.dtype, "remat": config.model.remat,
      "attention_impl": config.model.attention_impl, "packing": config.data.packing,
      "params": param_count(setup.state.params),
      "step_s": round(step_s, 4), "tokens_per_sec": round(tokens_per_sec, 1),
      "flops_per_token": setup.flops_per_token,
      "tflops_per_sec": round(speed["tflops_per_sec"], 3), "mfu": round(speed["mfu"], 4),
      "executed_tflops_per_sec": round(tokens_per_sec * executed / 1e12, 3),
      "peak_tflops": flops.peak_flops() / 1e12,
      "peak_memory_gib": (round(memory["peak_bytes_in_use"] / 2**30, 2)
                          if "peak_bytes_in_use" in memory else None),   # None: not reported (CPU)
      "wall_s": round(time.perf_counter() - start, 1)}
  line = json.dumps(record)
  print(line, flush=True)
  if _OUT.value:
    with open(_OUT.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")
  if _PROFILE.value:
    profile_steps(setup, state, batch, _PROFILE.value, record)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
