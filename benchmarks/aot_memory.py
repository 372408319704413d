"""Ahead-of-time compile of the train step for a mesh: XLA's memory per device.

  python -m benchmarks.aot_memory --config=configs/lm.py:base --devices=8 \
      --config.mesh.data=1 --config.mesh.fsdp=8 --hbm_gib=80

Nothing is allocated: the state and batch are abstract (shapes + shardings), so
a config too large for its devices fails here, on a laptop, before anyone pays
for a pod. `--devices=N` compiles for N fake CPU devices (the sharding and the
collectives are the real ones; the memory figures are the CPU compiler's, an
accelerator's differ somewhat); without it, for the devices this machine has.
Prints one JSON line; exits 1 when the estimated peak exceeds --hbm_gib.
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import fake_cpu_devices

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset")
_DEVICES = flags.DEFINE_integer("devices", 0, "Fake CPU devices to compile for (0: real ones)")
_HBM = flags.DEFINE_float("hbm_gib", 0.0, "Fail when the peak per device exceeds this (0: off)")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON line to this file")


def main(argv):
  del argv
  if _DEVICES.value:
    fake_cpu_devices(_DEVICES.value)
  from mgm import sharding
  from mgm.errors import ConfigError
  try:
    report = sharding.aot_memory_report(_CONFIG.value, sharding.make_mesh(_CONFIG.value.mesh))
  except ConfigError as e:
    print(f"aot_memory: {e}", file=sys.stderr)
    return 2
  line = json.dumps(report)
  print(line)
  if _OUT.value:
    with open(_OUT.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")
  if _HBM.value and report["peak_gib_per_device"] > _HBM.value:
    print(f"aot_memory: needs {report['peak_gib_per_device']} GiB per device, more than "
          f"--hbm_gib={_HBM.value}; lower train.batch_size or data.seq_len, shard more "
          "(mesh.fsdp, mesh.tensor) or set model.remat=True", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
