"""Shared by the benchmarks: build a config from explicit shapes, time a jitted function."""
import json
import resource
import time

import jax

from configs import lm as lm_configs


def model_config(model: str, dims, depths, heads: int, patch: int, seq_len: int,
                 word_max_len: int = 16, sentence_max_len: int = 256):
  """`configs/lm.py` levels for `model` with explicit widths/depths (coarsest first)."""
  config = lm_configs.get_config(f"model={model},size=demo")
  levels = lm_configs.model_levels(model, "demo")
  if len(dims) != len(levels) or len(depths) != len(levels):
    raise SystemExit(f"--dims/--depths need {len(levels)} values for {model}")
  for level, width, depth in zip(levels, dims, depths):
    level.update(width=width, depth=depth, heads=heads)
    if level.get("units", "").startswith("fixed:"):
      level.units = f"fixed:{patch}"
    elif level.get("units") == "word":
      level.update(max_len=word_max_len, max_units=seq_len // 4)
    elif level.get("units") == "sentence":
      level.update(max_len=sentence_max_len, max_units=seq_len // 16)
  config.model.levels = levels
  config.data.seq_len = seq_len
  return config


def time_calls(fn, *args, warmup: int = 1, repeats: int = 3):
  """Seconds per call after `warmup` calls (which include compilation)."""
  out = None
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats, out


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def emit(record: dict):
  print(json.dumps(record), flush=True)


def fake_cpu_devices(count: int):
  """Compile and run on `count` fake CPU devices (the sharding and collectives are
  the real ones). Must run before jax first touches a device."""
  import os
  flag = f"--xla_force_host_platform_device_count={count}"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [flag])
  jax.config.update("jax_platforms", "cpu")
