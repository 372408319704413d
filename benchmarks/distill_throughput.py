"""Tokens/s of a distillation train step against a plain one, interleaved in one process.

  python -m benchmarks.distill_throughput --student=flat --teachers=flat,mgm3 --size=demo

Builds the student's plain step and its distillation step (mgm/setup.py,
`teachers=True`) for the same config; the teachers are runs written to a
temporary directory (their initial parameters: a step's cost does not depend
on the values). Then alternates `--rounds` times: `--steps` plain steps, the
same number of distillation steps, each round timed after its warm-up. The
fp32 matmul probe (mgm.flops.measured_matmul_flops) and the 1-minute load are
read before and after: on a shared machine the ratio is the figure to read.
"""
import argparse
import datetime
import os
import statistics
import tempfile
import time

import jax

from benchmarks.common import emit
from configs import lm as lm_configs
from mgm import checkpoint, flops
from mgm.data import pipeline
from mgm.setup import Setup
from mgm.workdir import check_and_save_config


def teacher_run(directory: str, model: str, size: str) -> str:
  """A run of `model` at `size` (its initial state) in `directory`: config.json + step 0."""
  config = lm_configs.get_config(f"model={model},size={size}")
  setup = Setup.create(config)
  mngr = checkpoint.manager(directory, config.checkpoint, enable_async=False)
  checkpoint.save(mngr, 0, setup.state, force=True)
  mngr.wait_until_finished()
  check_and_save_config(directory, config)
  return directory


def timed(step, state, batch, steps: int):
  """(state, seconds per step) over `steps` steps."""
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - start) / steps


def machine() -> dict:
  return {"probe_gflops": round(flops.measured_matmul_flops() / 1e9),
          "load_1min": round(os.getloadavg()[0], 2)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--student", default="flat")
  p.add_argument("--teachers", default="flat", help="comma-separated models")
  p.add_argument("--size", default="demo")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args()
  before = machine()
  with tempfile.TemporaryDirectory() as tmp:
    paths = [teacher_run(os.path.join(tmp, f"t{i}"), m, args.size)
             for i, m in enumerate(args.teachers.split(","))]
    config = lm_configs.get_config(f"model={args.student},size={args.size}")
    config.distill.update(teachers=",".join(paths), alpha=0.5, temperature=2.0)
    plain, taught = Setup.create(config), Setup.create(config, teachers=True)
  batch = plain.placement.global_batch(next(iter(pipeline.make_dataset(
      config.data, "train", batch_size=config.train.batch_size, seed=0))))
  states = {"plain": timed(plain.train_step, plain.state, batch, 1)[0],
            "distill": timed(taught.train_step, taught.state, batch, 1)[0]}   # compiled
  seconds = {"plain": [], "distill": []}
  for _ in range(args.rounds):
    for name, setup in (("plain", plain), ("distill", taught)):
      states[name], s = timed(setup.train_step, states[name], batch, args.steps)
      seconds[name].append(s)
  tokens = plain.tokens_per_step
  ratios = [d / p for p, d in zip(seconds["plain"], seconds["distill"])]
  emit({"bench": "distill_step", "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(), "student": args.student, "teachers": args.teachers,
        "size": args.size, "tokens_per_step": tokens,
        "plain_tokens_per_sec": round(tokens / statistics.median(seconds["plain"]), 1),
        "distill_tokens_per_sec": round(tokens / statistics.median(seconds["distill"]), 1),
        "distill_over_plain_time": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "machine_before": before, "machine_after": machine()})


if __name__ == "__main__":
  main()
