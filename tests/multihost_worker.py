"""One of the two processes of tests/test_multihost.py (not a test itself).

  PYTHONPATH=. XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python tests/multihost_worker.py PORT PROCESS_ID WORKDIR OUT_JSON

Joins the other process over 127.0.0.1 (the `distributed.*` config fields),
trains the `tiny` preset for 3 steps with `mgm.loop.train` on the global
8-device mesh (parameters sharded over all 8: each process holds shards no
other does), records the host-local batches it fed, then restores the
checkpoint both processes wrote and reports what it holds; last, in a copy of
the checkpoints where process 1 flipped bytes of the newest step's shards it
wrote, each process checks that step and both restore the newest usable one.
"""
import json
import os
import shutil
import sys
from pathlib import Path

STEPS = 3


def config_for(port: int, process_id: int):
  from configs import lm as lm_configs
  config = lm_configs.get_config("tiny")
  config.train.update(steps=STEPS, log_every=1, eval_every=STEPS)
  config.mesh.fsdp = 8                  # ZeRO-3 over both processes' devices
  config.checkpoint.every_steps = 2     # steps 2 and 3 (the last, forced)
  config.distributed.update(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                            process_id=process_id)
  return config


def placement_for(config):
  """Where the train state lives on the global mesh (abstract: nothing compiled)."""
  from mgm import sharding
  from mgm.model import spec as spec_lib
  from mgm.model.lm import LM
  from mgm.train import make_optimizer
  tx, _ = make_optimizer(config.train)
  return sharding.make_placement(config, LM(spec_lib.from_config(config.model)), tx,
                                 sharding.make_mesh(config.mesh))


def param_sums(params) -> dict:
  """{path: sum} of each parameter, computed on the devices (the arrays span
  both processes, so no process can read them whole)."""
  import jax
  import jax.numpy as jnp
  sums = jax.jit(lambda p: jax.tree.map(jnp.sum, p))(params)
  return {jax.tree_util.keystr(k): float(v) for k, v in jax.tree_util.tree_leaves_with_path(sums)}


def flip_bytes(directory: Path):
  """Flip 8 bytes in the middle of the biggest file under `directory`."""
  biggest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
  biggest.write_bytes(bytes(data))


def damaged_restore(workdir: str, abstract_state) -> dict:
  """In a copy of the checkpoints, process 1 damages the shards it wrote of the
  newest step; {own_check: this process's error restoring that step (None if
  it found none), step: the step restore_newest falls back to}."""
  import jax
  from jax.experimental import multihost_utils
  from mgm import checkpoint
  copy = Path(workdir) / "checkpoints_damaged"
  if jax.process_index() == 0:
    shutil.copytree(Path(workdir) / "checkpoints", copy)
  multihost_utils.sync_global_devices("mgm_test_copied")
  if jax.process_index() == 1:
    flip_bytes(copy / str(STEPS) / "state" / "ocdbt.process_1")
  multihost_utils.sync_global_devices("mgm_test_damaged")
  mngr = checkpoint.read_only_manager(str(copy))
  try:
    checkpoint._restore_step(mngr, STEPS, abstract_state)
    own_check = None
  except Exception as e:   # what restore_newest would name in its warning
    own_check = checkpoint._problem(e)
  _, step = checkpoint.restore_newest(mngr, abstract_state)
  return {"own_check": own_check, "step": step}


def main(port: int, process_id: int, workdir: str, out: str):
  from mgm import checkpoint, loop, sharding
  config = config_for(port, process_id)
  sharding.initialize_distributed(config.distributed)
  import jax
  fed = []
  to_global = sharding.Placement.global_batch

  def recording(placement, local):
    fed.append(local["tokens"].tolist())
    return to_global(placement, local)

  sharding.Placement.global_batch = recording
  summary = loop.train(config, workdir)
  train_fed = fed[:STEPS]   # then come the eval batches
  placement = placement_for(config)
  mngr = checkpoint.read_only_manager(os.path.join(workdir, "checkpoints"))
  state, step = checkpoint.restore_newest(mngr, placement.abstract_state)
  damaged = damaged_restore(workdir, placement.abstract_state)
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "devices": jax.device_count(), "local_devices": jax.local_device_count(),
               "data_shard": list(placement.data_shard()), "fed": train_fed,
               "restored_step": step, "restored_sums": param_sums(state.params),
               "steps": summary["steps"], "damaged": damaged}, f)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
