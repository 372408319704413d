"""Training-thread time of one checkpoint save: checksums hashed in the background
(as mgm.checkpoint.save does) against hashed before the save, on this thread
(as it did before per-host background checksums), and against no checksum at
all (Orbax's own share).

  python -m benchmarks.checkpoint_save --mb=200 --repeats=5

The state is `--mb` MB of float32 arrays of 16 MB each, on one device (or
`--devices=N` fake CPU devices, each array sharded over them). The three ways
take turns in one process (the load of the machine hits them alike); each save
is waited for before the next. Prints one JSON line: the median seconds until
`save` returns (`blocking_*`), until the step is written (`total_*`), and the
blocking ratio background / on_thread.
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


KINDS = ("background", "on_thread", "no_checksum")


def timed_save(mngr, step, state, kind: str):
  """(seconds until the save call returns, until the step is written)."""
  import orbax.checkpoint as ocp
  from mgm import checkpoint, checksums
  t0 = time.perf_counter()
  if kind == "background":
    checkpoint.save(mngr, step, state, force=True)
  else:
    sums = checksums.checksums(state, saving_step=step) if kind == "on_thread" else {}
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
  times, step = {kind: [] for kind in KINDS}, 1
  with tempfile.TemporaryDirectory() as workdir:
    mngr = checkpoint.manager(workdir, cfg)
    timed_save(mngr, step, state, "background")   # warm-up: compiles, opens files
    for i in range(_REPEATS.value):
      for kind in KINDS[i % 3:] + KINDS[:i % 3]:   # rotate which goes first
        step += 1
        times[kind].append(timed_save(mngr, step, state, kind))
  median = lambda kind, k: statistics.median(r[k] for r in times[kind])
  report = {"mb": _MB.value, "devices": jax.device_count(), "repeats": _REPEATS.value,
            **{f"blocking_{kind}_s": round(median(kind, 0), 4) for kind in KINDS},
            **{f"total_{kind}_s": round(median(kind, 1), 4) for kind in KINDS}}
  report["blocking_ratio"] = round(report["blocking_background_s"]
                                   / report["blocking_on_thread_s"], 3)
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
