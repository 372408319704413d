"""Orbax checkpoints: train state, data-iterator position and a checksum, saved together.

A step directory holds three items: `state` (the TrainState), `data` (Grain's
iterator state, one file per process) and `checksum` (sha256 of every array and
of the iterator state). Orbax notices deleted or truncated files but not
flipped bytes (STACK-NOTES), hence the checksum of our own, verified after
every restore.

Restoring walks back from the newest step to the first one that restores and
matches its checksum, warning about each unusable step on the way. In a run
that trains on, those newer steps (and partial `N.orbax-checkpoint-tmp*`
directories left by a crash) are moved to `checkpoints_unusable/` next to
`checkpoints/` (never deleted), since saving that step again would collide.
"""
import datetime
import os
import time
import types

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from mgm import checksums, files
from mgm.errors import ConfigError, WorkdirError
from mgm.model import scan_layout

ITEMS = ("state", "data", "checksum")
BEST_METRIC = "eval_bpb"   # lower is better
UNUSABLE = "checkpoints_unusable"
_PARTIAL = ".orbax-checkpoint-tmp"


class FromStart(policies.SaveDecisionPolicy):
  """`policy` shown a checkpoint at `start` (default: now) while there is none,
  so that a time interval counts from the start of the run, not from a first
  save at once (what ContinuousCheckpointingPolicy does with no previous step)."""

  def __init__(self, policy: policies.SaveDecisionPolicy, start=None):
    self.policy = policy
    self.start = start or datetime.datetime.now(tz=datetime.timezone.utc)

  def should_save(self, step, previous_steps, *, context) -> bool:
    started = types.SimpleNamespace(step=-1, time=self.start, metrics=None)
    return self.policy.should_save(step, previous_steps or [started], context=context)


def every_minutes(minutes: float, start=None) -> policies.SaveDecisionPolicy:
  """Save once `minutes` have passed since the newest checkpoint (or the start):
  Orbax's ContinuousCheckpointingPolicy, which decides on process 0 and tells
  every host, and defers a save while the previous one is still being written."""
  return FromStart(policies.ContinuousCheckpointingPolicy(minimum_interval_secs=minutes * 60),
                   start)


def manager(workdir: str, ckpt_cfg, enable_async: bool = True) -> ocp.CheckpointManager:
  """Saves every `every_steps` steps and every `every_minutes` minutes (0 = off);
  keeps the newest `keep` steps and, with `keep_best`, the one of lowest eval_bpb."""
  best_metric = lambda metrics: metrics[BEST_METRIC]
  keep = [policies.LatestN(ckpt_cfg.keep)]
  if ckpt_cfg.keep_best:
    keep.append(policies.BestN(get_metric_fn=best_metric, reverse=True, n=1,
                               keep_checkpoints_without_metrics=False))
  when = [policies.FixedIntervalPolicy(ckpt_cfg.every_steps)]
  if ckpt_cfg.every_minutes:
    when.append(every_minutes(ckpt_cfg.every_minutes))
  options = ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=enable_async,
      # best_fn only makes Orbax write the metrics with each step (BestN reads them)
      best_fn=best_metric if ckpt_cfg.keep_best else None, best_mode="min",
      preservation_policy=policies.AnyPreservationPolicy(keep),
      save_decision_policy=policies.AnySavePolicy(when))
  return ocp.CheckpointManager(files.path(workdir) / "checkpoints", options=options,
                               item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter=None, metrics=None,
         force: bool = False) -> bool:
  """Save `step` if the manager's policy says so (or `force`); True if it did.

  `metrics` (with eval_bpb) rank the step for `checkpoint.keep_best`. Raises
  TrainingError rather than write a non-finite value.
  """
  if not force and not mngr.should_save(step):
    return False
  sums = checksums.start(state, data_iter, saving_step=step)   # hashed in the background
  items = {"state": ocp.args.StandardSave(state), "checksum": checksums.Save(sums)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
  return True


def abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _restore_step(mngr, step: int, abstract_state, data_iter=None):
  """The verified state of one step (the iterator, if given, is set in place)."""
  items = {"state": ocp.args.StandardRestore(abstract_state), "checksum": checksums.Restore()}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  checksums.verify(restored.checksum or [], restored.state, data_iter)
  return restored.state


def _on_every_process(ok: bool) -> bool:
  """`ok` on every process, so that all hosts fall back to the same step."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).min())


def _problem(error: Exception) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def newest_usable(mngr, load, steps=None, move_aside: bool = False):
  """(load(step), step) for the newest step that loads, or (None, None) if there
  is no step. Each newer step that fails is named in a warning with what is
  wrong and, with `move_aside`, moved to checkpoints_unusable/. A ConfigError
  from `load` is the user's to fix and propagates; if every step fails,
  WorkdirError lists them all and nothing is moved.
  """
  failed = []
  for step in sorted(mngr.all_steps() if steps is None else steps, reverse=True):
    try:
      value, problem = load(step), None
    except ConfigError:
      raise
    except Exception as e:   # Orbax and TensorStore raise many types for damaged files
      value, problem = None, _problem(e)
    if not _on_every_process(problem is None):
      failed.append(step)
      logging.warning("checkpoint step %d in %s is unusable (%s); falling back to the "
                      "previous step", step, mngr.directory, problem or "on another process")
      continue
    if move_aside and failed:
      _move_aside(mngr, [str(s) for s in failed])
    return value, step
  if failed:
    raise WorkdirError(f"no usable checkpoint in {mngr.directory}: steps {failed} all fail "
                       "to restore (warnings above say why); nothing was changed")
  return None, None


def restore_newest(mngr, abstract_state, data_iter=None, move_aside: bool = False):
  """(state, step) of the newest usable step, or (None, None); see `newest_usable`."""
  load = lambda step: _restore_step(mngr, step, abstract_state, data_iter)
  return newest_usable(mngr, load, move_aside=move_aside)


def set_aside_partial(mngr):
  """Warn about and move aside step directories a crash left half-written."""
  directory = files.path(mngr.directory)
  partial = sorted(p.name for p in directory.iterdir() if _PARTIAL in p.name) if (
      directory.is_dir()) else []
  for name in partial:
    logging.warning("checkpoint step %s in %s was left partial (the run stopped while "
                    "saving it); ignoring it", name.split(".")[0], directory)
  if partial:
    _move_aside(mngr, partial)


def _move_aside(mngr, names):
  """Move step directories to checkpoints_unusable/ (process 0; all hosts wait)."""
  directory = files.path(mngr.directory)
  target = directory.parent / UNUSABLE
  if jax.process_index() == 0:
    target.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
      dest = (directory / name).rename(target / f"{name}-{stamp}")
      logging.warning("moved %s/%s to %s", directory, name, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mgm_checkpoint_move_aside")
  mngr.reload()


def read_only_manager(directory: str, partial: bool = False) -> ocp.CheckpointManager:
  """A manager that only reads: --mode=eval/sample, and with `partial` (restoring
  only some of the state) checkpoint.init_from."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  state = ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler()
  handlers = {"state": state, "checksum": checksums.Handler(),
              "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _locate(path, field: str = "checkpoint.init_from"):
  """(checkpoints directory, steps or None) for a workdir, its checkpoints/
  directory, or one step directory in it; ConfigError naming `field` else."""
  path = files.path(os.fspath(path).rstrip("/"))
  if (path / "checkpoints").is_dir():
    return path / "checkpoints", None
  if path.name.isdigit() and path.is_dir():
    return path.parent, [int(path.name)]
  if path.is_dir():
    return path, None
  raise ConfigError(field, f"{os.fspath(path)!r} is not a directory; give a workdir, its "
                    "checkpoints/ directory or one step directory in it")


def _check_shapes(saved_tree, abstract_params, source: str, field: str = "checkpoint.init_from"):
  """ConfigError listing every parameter whose shape differs, or that only one side has."""
  saved = {checksums.name(p): tuple(m.shape)
           for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  want = {checksums.name(p): tuple(a.shape)
          for p, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  parts = [f"`{n}` is {saved[n]} there but {want[n]} here"
           for n in sorted(saved.keys() & want.keys()) if saved[n] != want[n]]
  if want.keys() - saved.keys():
    parts.append(f"missing there: {', '.join(sorted(want.keys() - saved.keys()))}")
  if saved.keys() - want.keys():
    parts.append(f"only there: {', '.join(sorted(saved.keys() - want.keys()))}")
  if parts:
    raise ConfigError(field, f"the parameters in {source} do not fit this "
                      f"model: {'; '.join(parts)}. Use the model config of the run that "
                      "wrote them (its config.json), or another checkpoint.")


def restore_params(path: str, abstract_params, field: str = "checkpoint.init_from"):
  """(params, 'directory/step') from the newest usable step under `path`, placed
  as `abstract_params`' shardings say; ConfigError naming `field` (the config
  field that gave `path`) when it holds none or they do not fit."""
  directory, steps = _locate(path, field)
  mngr = read_only_manager(directory, partial=True)

  def load(step):
    saved_tree = mngr.item_metadata(step).state.tree["params"]
    saved_layout, want = scan_layout.layout(saved_tree), scan_layout.layout(abstract_params)
    same = saved_layout == want
    abstract = abstract_params if same else scan_layout.abstract_like(abstract_params,
                                                                      saved_layout)
    _check_shapes(saved_tree, abstract, f"{directory}/{step}", field)
    target = {"params": abstract}
    restore_args = (ocp.checkpoint_utils.construct_restore_args(target) if same else
                    jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target))
    state = ocp.args.PyTreeRestore(target, partial_restore=True, restore_args=restore_args)
    restored = mngr.restore(step, args=ocp.args.Composite(state=state,
                                                          checksum=checksums.Restore()))
    checksums.verify(restored.checksum or [], restored.state, only="params/")
    if same:
      return restored.state["params"]
    # model.scan_layers differs from the run that wrote them: the other layout.
    params = scan_layout.to_layout(restored.state["params"], want)
    return jax.tree.map(lambda a, like: jax.device_put(a, getattr(like, "sharding", None)),
                        params, abstract_params)

  params, step = newest_usable(mngr, load, steps)
  if step is None:
    raise ConfigError(field, f"no checkpoint in {directory}")
  return params, f"{directory}/{step}"
