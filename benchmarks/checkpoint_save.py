"""Training-thread time of one checkpoint save: checksums hashed in the background
(as mgm.checkpoint.save does) against hashed before the save, on this thread
(as it did before per-host background checksums).

  python -m benchmarks.checkpoint_save --mb=200 --repeats=5

The state is `--mb` MB of float32 arrays of 16 MB each, on one device (or
`--devices=N` fake CPU devices, each array sharded over them). The two ways
alternate in one process (the load of the machine hits both alike); each save
is waited for before the next. Prints one JSON line: the median seconds until
`save` returns (`blocking_*`), until the step is written (`total_*`), and the
blocking ratio.
"""
import json
import statistics
import tempfile
import time

from absl import app, flags

from benchmarks.common import fake_cpu_devices

_MB = flags.DEFINE_integer("mb", 200, "Size of the state in MB (float32)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Saves of each kind")
_DEVICES = flags.DEFINE_integer("devices", 0, "Fake CPU devices (0: the real ones)")


def state_of(megabytes: int):
  import jax
  import jax.numpy as jnp
  mesh = jax.make_mesh((jax.device_count(),), ("d",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  n = max(1, megabytes // 16)
  make = jax.jit(lambda i: jnp.full((4096, 1024), i, jnp.float32), out_shardings=spread)
  return {"params": {f"w{i}": make(float(i)) for i in range(n)}, "step": jnp.int32(0)}


def timed_save(mngr, step, state, background: bool):
  import orbax.checkpoint as ocp
  from mgm import checkpoint, checksums
  t0 = time.perf_counter()
  if background:
    checkpoint.save(mngr, step, state, force=True)
  else:
    sums = checksums.checksums(state, saving_step=step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            checksum=checksums.Save(sums)), force=True)
  blocking = time.perf_counter() - t0
  mngr.wait_until_finished()
  return blocking, time.perf_counter() - t0


def main(argv):
  del argv
  if _DEVICES.value:
    fake_cpu_devices(_DEVICES.value)
  import jax
  import ml_collections as mlc
  from mgm import checkpoint
  state = state_of(_MB.value)
  jax.block_until_ready(state)
  cfg = mlc.ConfigDict(dict(every_steps=1, every_minutes=0.0, keep=1, keep_best=False,
                            init_from=""))
  times = {True: [], False: []}
  with tempfile.TemporaryDirectory() as workdir:
    mngr = checkpoint.manager(workdir, cfg)
    timed_save(mngr, 1, state, True)   # warm-up: compiles, opens files
    for i in range(_REPEATS.value):
      for background in (i % 2 == 0, i % 2 == 1):   # alternate which goes first
        times[background].append(timed_save(mngr, len(times[True]) * 2 + len(times[False]) + 2,
                                             state, background))
  median = lambda runs, k: statistics.median(r[k] for r in runs)
  report = {"mb": _MB.value, "devices": jax.device_count(), "repeats": _REPEATS.value,
            "blocking_background_s": median(times[True], 0),
            "blocking_on_thread_s": median(times[False], 0),
            "total_background_s": median(times[True], 1),
            "total_on_thread_s": median(times[False], 1)}
  report["blocking_ratio"] = report["blocking_background_s"] / report["blocking_on_thread_s"]
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
