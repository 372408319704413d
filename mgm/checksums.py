"""sha256 of a checkpoint's arrays, per host and off the training thread.

Each process hashes the shards it holds of every array: one per distinct
shard index among its own devices, keyed by that index (str of the tuple of
slices, "(slice(0, 4, None), slice(None, None, None))"; a fully replicated
array has the one whole-array index). With the sha256 of its data iterator's
position it writes them as `checksum/process_<i>.json` in the step directory
(`Handler`, an Orbax item), so on several hosts every shard is covered by the
host that wrote it.

Saving (`start`): on the training thread only the copies are dispatched, each
shard to its device's pinned host memory (a device copy where a backend has
none), since the next train step donates and reuses the state's buffers. A
background thread waits for them, checks that every value is finite and
hashes them; the Orbax commit of the step awaits that future, so a step whose
sums failed is never finalized.

Restoring (`verify`): each process hashes the shards it restored and compares
them with every saved sum of the same array and index, from any process's
file (a checkpoint restored on another number of hosts is checked where the
layouts share indices; indices no file lists cannot be compared and are
skipped). Files written before this layout (one `metadata` JSON of process 0,
whole arrays under "all") still verify.
"""
import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src import asyncio_utils
from orbax.checkpoint._src.futures import future as ocp_future
from orbax.checkpoint._src.handlers import async_checkpoint_handler

from mgm.errors import TrainingError

DATA = "data_iterator"
WHOLE = "all"        # the key of a whole array in checksums written before per-shard ones
_LEGACY = "metadata"  # the file of those (Orbax's JsonSave, process 0 only)
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgm-checksum")


def name(path) -> str:
  """'params/levels_0/kernel': the same for a dataclass's and a dict's keys."""
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                  for k in path)


def _sha(data) -> str:
  return hashlib.sha256(data).hexdigest()


def _own_shards(leaf) -> dict:
  """{index key: single-device array} of this process's shards, one per index."""
  if not isinstance(leaf, jax.Array):
    return {str(tuple(slice(None) for _ in np.shape(leaf))): np.asarray(leaf)}
  shards = {}
  for shard in sorted(leaf.addressable_shards, key=lambda s: s.replica_id):
    shards.setdefault(str(shard.index), shard.data)
  return shards


def _host_copies(arrays: list) -> list:
  """Copies of single-device arrays in their devices' pinned host memory (a
  device copy without one), dispatched without waiting: they outlive the
  donation of the originals."""
  def target(array):
    device = array.device
    kinds = {m.kind for m in device.addressable_memories()}
    kind = "pinned_host" if "pinned_host" in kinds else None
    return jax.sharding.SingleDeviceSharding(device, memory_kind=kind)
  on_device = [a for a in arrays if isinstance(a, jax.Array)]
  copies = iter(jax.device_put(on_device, [target(a) for a in on_device], may_alias=False)
                if on_device else [])
  return [next(copies) if isinstance(a, jax.Array) else a for a in arrays]


def snapshot(state, data_iter=None) -> dict:
  """{array name: {index key: host copy}} of this process's shards of `state`
  and (under DATA) its iterator's position; dispatched, not waited for."""
  leaves = [(name(p), _own_shards(leaf))
            for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]
  flat = [a for _, shards in leaves for a in shards.values()]
  copies = iter(_host_copies(flat))
  taken = {n: {key: next(copies) for key in shards} for n, shards in leaves}
  if data_iter is not None:
    position = json.dumps(data_iter.get_state(), sort_keys=True, default=str)
    taken[DATA] = {f"process_{jax.process_index()}": position.encode()}
  return taken


def _finite(array: np.ndarray) -> bool:
  return not np.issubdtype(array.dtype, np.inexact) or bool(np.isfinite(array).all())


def digest(taken: dict, saving_step=None) -> dict:
  """{array name: {index key: sha256}} of a `snapshot` (waits for its copies).
  With `saving_step`, a non-finite value raises TrainingError."""
  sums = {}
  for array_name, parts in taken.items():
    sums[array_name] = {}
    for key, part in parts.items():
      if not isinstance(part, bytes):
        part = np.ascontiguousarray(np.asarray(part))
        if saving_step is not None and not _finite(part):
          raise TrainingError(
              f"refusing to checkpoint step {saving_step}: `{array_name}` holds non-finite "
              "values (the train step should have skipped that update)")
        part = part.reshape(-1).view(np.uint8)   # its bytes, uncopied
      sums[array_name][key] = _sha(part)
  return sums


def checksums(state, data_iter=None, saving_step=None) -> dict:
  """This process's sums of `state` (and its iterator position), now."""
  return digest(snapshot(state, data_iter), saving_step)


def start(state, data_iter=None, saving_step=None) -> concurrent.futures.Future:
  """`checksums` in the background: copies dispatched here, hashed in a thread."""
  taken = snapshot(state, data_iter)
  return _POOL.submit(digest, taken, saving_step)


def _whole_sums(leaf) -> dict:
  """{WHOLE: sha256} of a whole array (the legacy layout), if this process holds it all."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return {}
  return {WHOLE: _sha(np.ascontiguousarray(np.asarray(leaf)).tobytes())}


def verify(saved: list, state, data_iter=None, only=None):
  """Raise ValueError naming the arrays whose shards held here differ from a
  saved sum of the same index (`saved`: the processes' files, as `Handler`
  restores them); `only`: the prefix of the names to check ("params/")."""
  keep = lambda n: only is None or n.startswith(only)
  merged = {}
  for sums in saved:
    for array_name, parts in sums.items():
      for key, value in parts.items():
        merged.setdefault(array_name, {}).setdefault(key, set()).add(value)
  merged = {n: parts for n, parts in merged.items() if keep(n)}
  leaves = {name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
  now = checksums(state, data_iter)
  for array_name, parts in merged.items():
    if WHOLE in parts and array_name in leaves:
      now[array_name].update(_whole_sums(leaves[array_name]))
  listed = lambda names: ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
  bad = sorted(n for n, sums in now.items() if n in merged and any(
      merged[n].get(key, {value}) != {value} for key, value in sums.items()))
  if bad:
    raise ValueError(f"checksum mismatch in {listed(bad)} (bytes changed on disk)")
  missing = sorted(n for n in set(now) - set(merged) if keep(n))
  if missing:
    raise ValueError(f"no saved checksum for {listed(missing)}")


class Handler(async_checkpoint_handler.AsyncCheckpointHandler):
  """The `checksum` item: process_<i>.json per process; restores the list of them."""

  async def _write(self, directory: epath.Path, sums):
    if isinstance(sums, concurrent.futures.Future):
      sums = await asyncio.wrap_future(sums)
    path = epath.Path(directory) / f"process_{jax.process_index()}.json"
    path.write_text(json.dumps(sums, sort_keys=True))

  async def async_save(self, directory: epath.Path, args: "Save"):
    return [ocp_future.CommitFutureAwaitingContractedSignals(
        self._write(directory, args.sums), name="mgm_checksum_save")]

  def save(self, directory: epath.Path, args: "Save"):
    asyncio_utils.run_sync(self._write(directory, args.sums))

  def restore(self, directory: epath.Path, args: "Restore" = None) -> list:
    directory = epath.Path(directory)
    files = sorted(directory.glob("process_*.json"))
    if not files and (directory / _LEGACY).exists():
      files = [directory / _LEGACY]
    if not files:
      raise FileNotFoundError(f"no checksum file in {directory}")
    return [json.loads(f.read_text()) for f in files]

  def metadata(self, directory: epath.Path):
    return None

  def finalize(self, directory: epath.Path):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(Handler, for_save=True)
@dataclasses.dataclass
class Save(ocp.args.CheckpointArgs):
  sums: Any   # a dict, or the Future of one (`start`)


@ocp.args.register_with_handler(Handler, for_restore=True)
@dataclasses.dataclass
class Restore(ocp.args.CheckpointArgs):
  pass
