"""Two real processes on 127.0.0.1, 4 fake CPU devices each, joined by
jax.distributed into one 8-device mesh (DESIGN §2): they train like one process
with 8 devices, each reads only its half of every batch, only process 0 writes
logs, and the checkpoint both wrote restores in both (and here, in one process).
Each process hashes and verifies the shards it holds: bytes flipped in the
shards only process 1 wrote are found by process 1, and both fall back.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgm import checkpoint, sharding
from mgm.data import pipeline
from mgm.setup import Setup
from tests.multihost_worker import STEPS, config_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def worker_env() -> dict:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return {**os.environ, "XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count=4"]),
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """(workdir, [process 0's report, process 1's report])."""
  tmp = tmp_path_factory.mktemp("multihost")
  workdir, port = tmp / "run", free_port()
  outs = [tmp / f"process_{i}.json" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "tests/multihost_worker.py", str(port), str(i),
                             str(workdir), str(outs[i])], cwd=ROOT, env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  try:
    logs = [p.communicate(timeout=400)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n{logs[i][-4000:] if logs else ''}"
  return workdir, [json.loads(o.read_text()) for o in outs]


def halves(config, step_count):
  """[process][step] the rows each of 2 processes reads (numpy batches)."""
  return [[b for _, b in zip(range(step_count), pipeline.make_dataset(
      config.data, "train", batch_size=config.train.batch_size, seed=config.seed,
      process_index=i, process_count=2))] for i in range(2)]


@pytest.fixture(scope="module")
def one_process():
  """(losses, params, setup) of one process with 8 devices fed the same global batches."""
  config = config_for(0, 0)
  parts = halves(config, STEPS)
  setup = Setup.create(config, mesh=sharding.make_mesh(config.mesh))
  state, losses = setup.state, []
  for a, b in zip(*parts):
    batch = {k: np.concatenate([a[k], b[k]]) for k in a}
    state, metrics = setup.train_step(state, setup.placement.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return losses, state.params, setup


def test_two_processes_train_like_one_with_8_devices(two_processes, one_process):
  workdir, reports = two_processes
  for i, report in enumerate(reports):
    assert (report["process_index"], report["process_count"]) == (i, 2)
    assert (report["devices"], report["local_devices"]) == (8, 4)
    assert report["data_shard"] == [i, 2] and report["steps"] == STEPS
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3], "one writer: process 0"
  np.testing.assert_allclose([r["train_loss"] for r in rows], one_process[0],
                             rtol=1e-5, atol=1e-5)
  assert (workdir / "summary.json").exists() and (workdir / "samples" / "step_3.txt").exists()


def test_each_process_reads_only_its_half_of_every_batch(two_processes):
  _, reports = two_processes
  parts = halves(config_for(0, 0), STEPS)
  for i, report in enumerate(reports):
    fed = np.asarray(report["fed"])
    assert fed.shape == (STEPS, 4, 64)     # 4 of the 8 rows of every global batch
    np.testing.assert_array_equal(fed, [b["tokens"] for b in parts[i]])
  assert not np.array_equal(reports[0]["fed"], reports[1]["fed"])


def test_checkpoint_written_by_both_restores_in_both_and_here(two_processes, one_process):
  workdir, reports = two_processes
  _, params, setup = one_process
  sums = jax.jit(lambda p: jax.tree.map(jnp.sum, p))(params)
  expected = {jax.tree_util.keystr(k): float(v)
              for k, v in jax.tree_util.tree_leaves_with_path(sums)}
  for report in reports:
    assert report["restored_step"] == STEPS
    assert report["restored_sums"].keys() == expected.keys()
    np.testing.assert_allclose(list(report["restored_sums"].values()),
                               list(expected.values()), rtol=1e-5, atol=1e-5)
  # one process, 8 local devices: the same checkpoint, laid out for this mesh
  mngr = checkpoint.read_only_manager(str(workdir / "checkpoints"))
  state, step = checkpoint.restore_newest(mngr, checkpoint.abstract(setup.state))
  assert step == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, params)


def test_each_process_verifies_its_own_shards_and_both_fall_back(two_processes):
  """Process 1 flipped bytes in the newest step's shards it wrote (parameters are
  sharded over both processes: process 0 does not read them). Its own checksums
  find the damage, so both processes fall back to the step before."""
  _, reports = two_processes
  assert "checksum mismatch" in (reports[1]["damaged"]["own_check"] or "")
  assert [r["damaged"]["step"] for r in reports] == [STEPS - 1] * 2
