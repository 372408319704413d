"""Sharding on 8 fake CPU devices (DESIGN §2): every mesh trains like one device,
parameters are laid out by the rules (a golden table), bad meshes fail clearly,
and the ahead-of-time memory report compiles `base` for 8 devices.

Regenerate the golden table after a deliberate change to the model's parameters
or to the rules (then review its diff):
  REGEN_GOLDEN=1 python -m pytest tests/test_sharding.py -k golden
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import lm as lm_configs
from mgm import sharding
from mgm.data import pipeline
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.setup import Setup
from mgm.train import init_params, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "partition_specs_tiny.json"
MESHES = {"8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2), "1x1x8": (1, 1, 8), "1x8x1": (1, 8, 1)}
STEPS = 3


def tiny_config(mesh=(-1, 1, 1)):
  config = lm_configs.get_config("tiny")
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  return config


def pspec_table(shardings) -> dict:
  """{'path/to/param': [mesh axes per dimension]} of a tree of NamedShardings."""
  as_json = lambda axes: list(axes) if isinstance(axes, tuple) else axes
  return {"/".join(k.key for k in path): [as_json(a) for a in s.spec]
          for path, s in jax.tree_util.tree_leaves_with_path(shardings)}


def logical_table(config) -> dict:
  """{'path/to/param': [logical axes]}: what the model declares."""
  model = LM(spec_lib.from_config(config.model))
  shape = (config.train.batch_size, config.data.seq_len)
  boxed = jax.eval_shape(lambda r: init_params(model, r, shape), jax.random.key(0))
  pspecs = nn.get_partition_spec(boxed)
  return {"/".join(k.key for k in path): list(s)
          for path, s in jax.tree_util.tree_leaves_with_path(
              pspecs, is_leaf=lambda x: isinstance(x, P))}


@pytest.fixture(scope="module")
def batches():
  data = pipeline.make_dataset(tiny_config().data, "train", batch_size=8, seed=0)
  return [batch for _, batch in zip(range(STEPS), data)]


def train(config, devices, batches):
  """(losses, final state, setup) after len(batches) steps on a mesh of `devices`."""
  setup = Setup.create(config, mesh=sharding.make_mesh(config.mesh, devices))
  state, losses = setup.state, []
  for batch in batches:
    state, metrics = setup.train_step(state, setup.placement.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return losses, state, setup


@pytest.fixture(scope="module")
def one_device(batches):
  return train(tiny_config(), jax.devices()[:1], batches)


@pytest.mark.parametrize("name", list(MESHES))
def test_every_mesh_trains_like_one_device(name, one_device, batches, capfd):
  losses, state, setup = train(tiny_config(MESHES[name]), jax.devices(), batches)
  # the partitioner found a collective for every resharding (with the embedding
  # table split over fsdp it replicated whole activations: mgm/sharding.py)
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  ref_losses, ref_state, _ = one_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, ref_state.params)
  # the arrays really are laid out as the golden table says, and stay so after steps
  golden = json.loads(GOLDEN.read_text())["meshes"][name]
  assert pspec_table(jax.tree.map(lambda a: a.sharding, state.params)) == golden
  # Adam's moments are sharded like their parameters; counters are replicated
  optax.tree_map_params(setup.tx, lambda m, p: _same_sharding(m, p), state.opt_state,
                        state.params, transform_non_params=_replicated)
  placement = setup.placement
  assert placement.global_batch(batches[0])["tokens"].sharding.spec == P(("data", "fsdp"), None)
  # the activation constraints (under the placement's mesh and rules) reach the program
  text = setup.train_step.lower(placement.abstract_state,
                                placement.abstract_batch(batches[0]["tokens"].shape[1])).as_text()
  assert text.count("sharding_constraint") >= 3 * 2   # per block: attention, MLP, residual


def _same_sharding(moment, param):
  assert moment.sharding == param.sharding


def _replicated(leaf):
  assert leaf.sharding.is_fully_replicated


def test_partition_specs_match_golden():
  tables = {"logical": logical_table(tiny_config()), "meshes": {}}
  for name, shape in MESHES.items():
    config = tiny_config(shape)
    tx, _ = make_optimizer(config.train)
    placement = sharding.make_placement(config, LM(spec_lib.from_config(config.model)), tx,
                                        sharding.make_mesh(config.mesh))
    tables["meshes"][name] = pspec_table(placement.state.params)
  if os.environ.get("REGEN_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(_one_line_lists(json.dumps(tables, indent=1, sort_keys=True)) + "\n")
  assert tables == json.loads(GOLDEN.read_text())


def _one_line_lists(text: str) -> str:
  """JSON with each innermost list on one line: one line per parameter."""
  inner = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]", re.S)
  while True:
    new = inner.sub(lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]", text)
    if new == text:
      return text
    text = new.replace("[\n", "[")   # lets an outer list collapse on the next pass


@pytest.mark.parametrize("override, field", [
    (dict(data=3), "mesh"),                     # 3 * 1 * 1 != 8 devices
    (dict(data=-1, fsdp=3), "mesh.data"),       # the rest of 8 over 3
    (dict(data=-1, fsdp=-1), "mesh.fsdp"),      # two -1
    (dict(tensor=0), "mesh.tensor"),
])
def test_a_mesh_that_does_not_fit_the_devices_names_the_field(override, field):
  config = tiny_config()
  config.mesh.update(override)
  with pytest.raises(ConfigError) as e:
    sharding.make_mesh(config.mesh)
  assert e.value.field == field


def test_a_batch_the_data_parallel_size_does_not_divide_names_the_field():
  config = tiny_config((2, 4, 1))
  config.train.batch_size = 12            # data * fsdp = 8
  with pytest.raises(ConfigError, match="data-parallel size 8") as e:
    Setup.create(config)
  assert e.value.field == "train.batch_size"


def test_micro_batches_the_data_parallel_size_does_not_divide_name_the_field():
  config = tiny_config((8, 1, 1))
  config.train.update(batch_size=16, grad_accum=4)   # micro-batches of 4 on 8 devices
  with pytest.raises(ConfigError, match="data-parallel size 8") as e:
    Setup.create(config)
  assert e.value.field == "train.grad_accum"


def test_gradient_accumulation_on_a_mesh_trains_like_one_pass_on_one_device(
    one_device, batches):
  """Batch 8 as 2 micro-batches of 4 on a (2, 2, 2) mesh: each device keeps its rows."""
  config = tiny_config(MESHES["2x2x2"])
  config.train.grad_accum = 2
  losses, state, _ = train(config, jax.devices(), batches)
  ref_losses, ref_state, _ = one_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, ref_state.params)


def test_a_rule_naming_an_unknown_mesh_axis_names_the_field():
  config = tiny_config()
  config.mesh.rules = config.mesh.rules + (("embed", "fsdpp"),)
  with pytest.raises(ConfigError, match="'fsdpp'") as e:
    Setup.create(config)
  assert e.value.field == "mesh.rules"


def test_launch_refuses_a_bad_mesh_with_exit_status_2(tmp_path):
  proc = subprocess.run([sys.executable, "launch.py", "--config=configs/lm.py:tiny",
                         f"--workdir={tmp_path}", "--config.mesh.data=3"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "config field `mesh`" in proc.stderr and "8 devices" in proc.stderr


def test_uneven_dimensions_are_replicated_not_refused():
  mesh = sharding.make_mesh(tiny_config((1, 1, 8)).mesh)
  # 259 byte ids on 8 tensor devices; embed 64 splits over fsdp (size 1) fine
  assert sharding.fit_partition_spec(P("tensor", "fsdp"), (259, 64), mesh) == P(None, "fsdp")
  assert sharding.fit_partition_spec(P(("data", "tensor")), (16,), mesh) == P(("data", "tensor"))
  assert sharding.fit_partition_spec(P(("tensor", "data")), (4,), mesh) == P(None)


def base_placement(mesh):
  config = lm_configs.get_config("base")
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  tx, _ = make_optimizer(config.train)
  return sharding.make_placement(config, LM(spec_lib.from_config(config.model)), tx,
                                 sharding.make_mesh(config.mesh))


def test_fsdp_divides_the_state_each_device_holds():
  replicated = sharding.bytes_per_device(base_placement((8, 1, 1)).abstract_state)
  sharded = sharding.bytes_per_device(base_placement((1, 8, 1)).abstract_state)
  assert replicated > 1.1e9                          # ~100M params x (param, Adam mu, nu)
  # all but the token embedding (259 x 768 float32, with Adam's mu and nu: replicated,
  # see MESH_RULES in configs/lm.py) is split 8 ways
  embedding = 259 * 768 * 4 * 3
  assert sharded == pytest.approx((replicated - embedding) / 8 + embedding, rel=1e-6)


AOT = [sys.executable, "-m", "benchmarks.aot_memory", "--config=configs/lm.py:base",
       "--devices=8"]


def test_aot_compile_of_base_for_8_devices_reports_memory_and_refuses_too_large():
  """`base` at a reduced sequence and batch (the full one is the slow test below)."""
  proc = subprocess.run(AOT + ["--config.mesh.data=1", "--config.mesh.fsdp=8",
                               "--config.data.seq_len=256", "--config.train.batch_size=8",
                               "--hbm_gib=0.2"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert report["params"] > 99e6 and report["state_gib_per_device"] == pytest.approx(0.139, abs=2e-3)
  assert report["peak_gib_per_device"] > 0.2            # so the budget check fails:
  assert proc.returncode == 1 and "more than --hbm_gib=0.2" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 8, 1), (8, 1, 1)])
def test_aot_compile_of_full_base_for_8_devices(mesh):
  """Sequence 8192, batch 64 (about 30 s per mesh on 2 cores); the figures are
  recorded in benchmarks/results/aot_memory.md."""
  config = lm_configs.get_config("base")
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  report = sharding.aot_memory_report(config, sharding.make_mesh(config.mesh))
  assert report["seq_len"] == 8192 and report["batch"] == 64
  assert report["peak_gib_per_device"] > report["state_gib_per_device"] > 0
