"""Train-step time of a preset on a mesh of (fake) devices, as one JSON line.

  python -m benchmarks.mesh_step_time --config=configs/lm.py:demo --devices=1
  python -m benchmarks.mesh_step_time --config=configs/lm.py:demo --devices=8 \
      [--config.mesh.fsdp=8 --config.mesh.data=1] [--steps=10]

The sharded train step exactly as `launch.py` runs it (state donated, batches
assembled with make_array_from_process_local_data), timed after one warm-up
(compile) step. Fake CPU devices share this machine's cores: this measures the
overhead of partitioning and collectives, not a speed-up.
"""
import json
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import fake_cpu_devices

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset")
_DEVICES = flags.DEFINE_integer("devices", 0, "Fake CPU devices (0: the real ones)")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps")


def main(argv):
  del argv
  if _DEVICES.value:
    fake_cpu_devices(_DEVICES.value)
  from mgm import batches as batches_lib
  from mgm.setup import Setup
  config = _CONFIG.value
  setup = Setup.create(config)
  data = iter(batches_lib.train_stream(config, setup.placement, seed=config.seed))
  batches = [setup.placement.global_batch(next(data)) for _ in range(_STEPS.value + 1)]
  start = time.perf_counter()
  state, metrics = setup.train_step(setup.state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for batch in batches[1:]:
    state, metrics = setup.train_step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / _STEPS.value
  tokens = config.train.batch_size * config.data.seq_len
  print(json.dumps({"bench": "mesh_step_time", "mesh": dict(setup.placement.mesh.shape),
                    "devices": jax.device_count(), "batch": config.train.batch_size,
                    "seq_len": config.data.seq_len, "step_s": round(step_s, 4),
                    "tokens_per_sec": round(tokens / step_s, 1),
                    "first_step_s": round(compile_s, 1), "loss": float(metrics["loss"]),
                    "backend": jax.default_backend()}))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
