"""Mesh, logical-axis rules, sharded state and host-local <-> global batches (DESIGN §2).

One `jax.sharding.Mesh` with axes ('data', 'fsdp', 'tensor'). Parameters and
activations carry logical axis names (`batch`, `embed`, `mlp`, ...); the rules
table `mesh.rules` maps them to mesh axes, in priority order (flax semantics:
a mesh axis is used at most once per array, the first rule wins). A single
device is the degenerate (1, 1, 1) mesh: the same code path.

Axis types are Auto: Flax Linen's logical constraints fail on Explicit axes
(STACK-NOTES).
"""
import contextlib
import dataclasses
import functools
import math
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mgm import adversarial as adv_lib
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, example_cond
from mgm.train import init_params, init_state, make_optimizer, make_train_step, param_count

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("batch", "length")   # logical axes of every [B, L] batch array


def initialize_distributed(dist_cfg) -> None:
  """`jax.distributed.initialize` as configured; must run before jax touches a device.

  `auto`: jax finds the coordinator itself (TPU pod slices, SLURM, ...).
  `coordinator_address`: explicit, with `num_processes` and `process_id`.
  Neither: a single process, nothing to do.
  """
  if dist_cfg.auto:
    jax.distributed.initialize()
    return
  if not dist_cfg.coordinator_address:
    return
  n, pid = dist_cfg.num_processes, dist_cfg.process_id
  if not isinstance(n, int) or n < 1:
    raise ConfigError("distributed.num_processes",
                      f"must be >= 1 with a coordinator_address, got {n!r}")
  if not isinstance(pid, int) or not 0 <= pid < n:
    raise ConfigError("distributed.process_id", f"must lie in [0, {n}), got {pid!r}")
  jax.distributed.initialize(coordinator_address=dist_cfg.coordinator_address,
                             num_processes=n, process_id=pid)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) with the one -1 resolved to 'the rest of the devices'."""
  sizes = {}
  for axis in MESH_AXES:
    size = mesh_cfg[axis]
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"mesh.{axis}", f"must be a positive integer or -1, got {size!r}")
    sizes[axis] = size
  free = [a for a in MESH_AXES if sizes[a] == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh.{free[1]}", f"only one mesh axis may be -1; {free} are")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"mesh.{free[0]}", f"-1 means the rest of the {num_devices} "
                        f"devices, but the other axes' product {fixed} does not divide it")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError("mesh", "mesh.data * mesh.fsdp * mesh.tensor = "
                      f"{' * '.join(str(sizes[a]) for a in MESH_AXES)} = {fixed}, but there "
                      f"are {num_devices} devices; make the product {num_devices} or set "
                      "one axis to -1")
  return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The mesh of `devices` (default: all devices of all processes) shaped by `mesh_cfg`."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def check_rules(rules) -> tuple:
  """`mesh.rules` as flax wants it: ((logical, mesh_axes), ...), every mesh axis known."""
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError("mesh.rules", f"each rule is (logical_name, mesh_axes); got {rule!r}")
    name, target = rule
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise ConfigError("mesh.rules", f"the rule for {name!r} names mesh axis "
                        f"{unknown[0]!r}; the mesh axes are {', '.join(MESH_AXES)}")
    out.append((name, target if target is None or isinstance(target, str) else axes))
  return tuple(out)


def fit_partition_spec(pspec: P, shape, mesh: Mesh) -> P:
  """`pspec` with each dimension's mesh axes cut to the longest prefix whose size
  divides that dimension: arrays must shard evenly (a byte vocabulary of 259,
  2 heads on 8 tensor devices), so such a dimension is replicated instead."""
  dims = []
  for size, axes in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec))):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    dims.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*dims)


# Parameters read by a gather (the token embedding table, mgm/nn/layers.py Embed)
# stay whole on every device, whatever the rules say. A gather's output takes
# the table's sharding of its last dimension: a table split over `fsdp` along
# `embed` yields activations split along embed, which the model then wants
# split along the batch over (data, fsdp). No collective moves a mesh axis
# from one dimension to another while adding another axis, so the SPMD
# partitioner replicated the whole activation and re-split it ("Involuntary
# full rematerialization", in the forward and the backward pass, on any mesh
# with fsdp > 1). A replicated table costs vocab x width floats (0.8 MB at
# `base`), and the gathered rows then follow the token ids' batch split.
GATHERED_PARAMS = ("embedding",)


def _param_name(path) -> str:
  return str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))


def _shards(pspec: P, mesh: Mesh) -> int:
  """Into how many pieces `pspec` cuts an array on `mesh`."""
  axes = [a for dim in pspec if dim is not None for a in ((dim,) if isinstance(dim, str) else dim)]
  return math.prod(mesh.shape[a] for a in axes)


def _param_pspecs(boxed_params, rules, mesh: Mesh):
  """Mesh PartitionSpecs of the (unboxed) params, from the boxed abstract init."""
  is_pspec = lambda x: isinstance(x, P)
  wanted = nn.logical_to_mesh(nn.get_partition_spec(boxed_params), rules)
  shapes = nn.meta.unbox(boxed_params)
  fitted = jax.tree_util.tree_map_with_path(
      lambda path, s, a: P() if _param_name(path) in GATHERED_PARAMS
      else fit_partition_spec(s, a.shape, mesh), wanted, shapes, is_leaf=is_pspec)
  for (path, a), w, f in zip(jax.tree_util.tree_leaves_with_path(shapes),
                             jax.tree.leaves(wanted, is_leaf=is_pspec),
                             jax.tree.leaves(fitted, is_leaf=is_pspec)):
    if _shards(w, mesh) != _shards(f, mesh):
      logging.info("%s %s: rules give %s (uneven on mesh %s, or gathered from); using %s",
                   jax.tree_util.keystr(path), a.shape, w, dict(mesh.shape), f)
  return fitted


def param_shardings(boxed_params, rules, mesh: Mesh):
  """NamedShardings of a model's (unboxed) params from its boxed abstract init,
  laid out as the train state's params are (a frozen teacher's: mgm/distill.py)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), _param_pspecs(boxed_params, rules, mesh),
                      is_leaf=lambda x: isinstance(x, P))


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where the train state and the batches live, and the mesh + rules under
  which the model is traced (its activation constraints read them); `jit`
  traces a function under them."""
  mesh: Mesh
  rules: tuple
  state: Any            # TrainState of NamedSharding
  abstract_state: Any   # TrainState of ShapeDtypeStruct carrying those shardings
  batch: NamedSharding  # every [B, L] batch array
  batch_size: int       # global

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def jit(self, fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)`, traced (on first call) under this placement's context."""
    jitted = jax.jit(fn, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args):
      with self.context():
        return jitted(*args)

    call.lower = lambda *args: _lower(self, jitted, args)
    return call

  def train_step(self, step_fn, teachers=None):
    """(state, batch) -> (state, metrics) jitted: state in place (donated), metrics
    replicated; with `teachers` (their params' shardings, mgm/distill.py), a third
    argument, the teachers' params, placed so (not donated)."""
    extra = () if teachers is None else (teachers,)
    return self.jit(step_fn, in_shardings=(self.state, self.batch, *extra),
                    out_shardings=(self.state, self.replicated), donate_argnums=0)

  def eval_step(self, eval_fn):
    """(params, batch) -> replicated sums, jitted."""
    return self.jit(eval_fn, in_shardings=(self.state.params, self.batch),
                    out_shardings=self.replicated)

  def abstract_batch(self, seq_len: int, spec=None) -> dict:
    """The batch as ShapeDtypeStructs (what the pipeline yields, globally), with
    the conditioning inputs the encoders of model `spec` read."""
    struct = lambda dtype, shape=(self.batch_size, seq_len): jax.ShapeDtypeStruct(
        shape, dtype, sharding=self.batch)
    cond = example_cond(spec, self.batch_size) if spec is not None else None
    return {"tokens": struct(np.int32), "segment_ids": struct(np.int32),
            "mask": struct(np.float32),
            **{k: struct(v.dtype, v.shape) for k, v in (cond or {}).items()}}

  def data_shard(self) -> tuple[int, int]:
    """(index, count): this process reads part `index` of `count` of every global
    batch. Processes whose devices hold the same rows (replicas along the batch)
    read the same part; with batch sharded over all devices, (process, processes)."""
    rows = {}
    for device, index in self.batch.devices_indices_map((self.batch_size, 1)).items():
      rows.setdefault(device.process_index, set()).update(
          range(*index[0].indices(self.batch_size)))
    parts = sorted({tuple(sorted(r)) for r in rows.values()})
    if sum(map(len, parts)) != self.batch_size:
      raise ConfigError("mesh", "processes hold overlapping but different batch rows on "
                        f"this mesh {dict(self.mesh.shape)}; order the devices by process")
    return parts.index(tuple(sorted(rows[jax.process_index()]))), len(parts)

  def global_batch(self, local: dict) -> dict:
    """This process's rows (numpy) -> global jax.Arrays sharded as `batch`."""
    return {k: jax.make_array_from_process_local_data(
        self.batch, v, (self.batch_size,) + v.shape[1:]) for k, v in local.items()}


def _lower(placement, jitted, args):
  with placement.context():
    return jitted.lower(*args)


def _check_batch(batch_size: int, pspec: P, mesh: Mesh, grad_accum: int = 1):
  axes = () if pspec[0] is None else (pspec[0],) if isinstance(pspec[0], str) else pspec[0]
  parallel = math.prod(mesh.shape[a] for a in axes)
  if batch_size % parallel:
    raise ConfigError("train.batch_size", f"the global batch {batch_size} must be a multiple "
                      f"of the data-parallel size {parallel} (mesh axes {' * '.join(axes)} "
                      f"of mesh {dict(mesh.shape)})")
  if (batch_size // grad_accum) % parallel:
    raise ConfigError("train.grad_accum", f"a micro-batch of {batch_size} // {grad_accum} "
                      f"sequences does not split over the data-parallel size {parallel}; "
                      "lower train.grad_accum or raise train.batch_size")


def make_placement(config, model, tx, mesh: Mesh) -> Placement:
  """Shardings of the train state (params by the rules; optimizer moments like
  their params; everything else, such as step and counters, replicated) and of
  the batch. Abstract only: nothing is allocated, so this also serves
  ahead-of-time compilation."""
  rules = check_rules(config.mesh.rules)
  shape = (config.train.batch_size, config.data.seq_len)
  batch_pspec = nn.logical_to_mesh_axes(BATCH_AXES, rules)
  _check_batch(shape[0], batch_pspec, mesh, config.train.grad_accum)
  key = jax.random.key(0)
  boxed = jax.eval_shape(lambda r: init_params(model, r, shape), key)
  adversarial = adv_lib.from_config(config)   # its discriminator is small: replicated
  abstract = jax.eval_shape(lambda r: init_state(model, tx, r, shape, adversarial), key)
  is_pspec = lambda x: isinstance(x, P)
  params = _param_pspecs(boxed, rules, mesh)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, params,
                              transform_non_params=lambda _: P(), is_leaf=is_pspec)
  pspecs = jax.tree.map(lambda _: P(), abstract).replace(params=params, opt_state=opt)
  state = jax.tree.map(lambda s: NamedSharding(mesh, s), pspecs, is_leaf=is_pspec)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state)
  return Placement(mesh, rules, state, abstract, NamedSharding(mesh, batch_pspec), shape[0])


def _gib(num_bytes) -> float:
  return round(num_bytes / 2**30, 3)


def bytes_per_device(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (or arrays)."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
             for a in jax.tree.leaves(abstract_tree))


def aot_memory_report(config, mesh: Mesh) -> dict:
  """Compile the train step for `mesh` from abstract inputs (nothing is allocated)
  and report XLA's memory estimate per device, so a config too large for its
  devices fails here, before anyone pays for them. On fake CPU devices the
  numbers are the CPU compiler's; an accelerator's differ (fusion, layouts)."""
  model = LM(spec_lib.from_config(config.model), config.data.packing)
  tx, _ = make_optimizer(config.train)
  placement = make_placement(config, model, tx, mesh)
  step = placement.train_step(make_train_step(model, tx, config.train.grad_accum,
                                              config.train.label_smoothing,
                                              adv_lib.from_config(config), config.seed))
  start = time.perf_counter()
  compiled = step.lower(placement.abstract_state, placement.abstract_batch(config.data.seq_len,
                                                                   model.spec)).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  return {"mesh": dict(mesh.shape), "devices": mesh.size, "backend": jax.default_backend(),
          "params": param_count(placement.abstract_state.params),
          "batch": config.train.batch_size, "seq_len": config.data.seq_len,
          "dtype": config.model.dtype, "remat": config.model.remat,
          "compile_s": round(time.perf_counter() - start, 1),
          "state_gib_per_device": _gib(bytes_per_device(placement.abstract_state)),
          "argument_gib": _gib(mem.argument_size_in_bytes),
          "output_gib": _gib(mem.output_size_in_bytes),
          "alias_gib": _gib(mem.alias_size_in_bytes),
          "temp_gib": _gib(mem.temp_size_in_bytes), "peak_gib_per_device": _gib(peak),
          "peak_bytes_per_device": int(peak)}
