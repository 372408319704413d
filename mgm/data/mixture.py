"""Task mixtures (data.tasks): one model, several tasks, L = sum_i lambda_i L_i.

`data.tasks` lists ConfigDicts, one per task:
  name    the task's name: its metrics are loss_<name>, tokens_<name>, eval_bpb_<name>
  source  any data.source (synthetic | text | tfds | shapes | translate | summarize |
          copy | reverse | pairs | ...): the task's own data
  rate    its sampling rate (> 0; relative: the rows of each task are in the ratio
          of the rates)
  weight  its loss weight lambda_i (>= 0)
  any other data.* field: overrides the shared data config for this task (files,
          tfds_*, corpus_seed, ...); the row shape (seq_len, source_len, image_size,
          image_channels) and packing stay shared.
An empty list is the single-task run, unchanged.

Data: each task's rows come from the single-task pipeline (pipeline.task_rows);
they are put in one schema (`conform`) and mixed by Grain's own
`IterDataset.mix` with weights = rates (a deterministic interleaving in the ratio
of the rates), then batched. The mixed iterator's state holds every task's state
and the mixing position, so a resumed run reproduces the task sequence exactly.

A mixed row, as the single-task row plus:
  task         int32 [1]         the task's index in data.tasks (the decoder's task
                                 marker, mgm/model/lm.py); [1], not a scalar: every
                                 batch array is [B, ...] of rank >= 2 (the batch
                                 sharding, mgm/sharding.py, is one for all of them)
  source       int32 [source_len] / image uint8 [H, W, C]: when any task has them;
                                 EOS-only / zeros in a row whose task has none
  has_source / has_image  bool [1]  whether the row's task has that input; a row
                                 without it gets an all-masked memory (mgm/model/lm.py)
"""
import itertools

import grain
import ml_collections
import numpy as np

from mgm.data import paired, pipeline
from mgm.errors import ConfigError

TASK_FIELDS = ("name", "source", "rate", "weight")
TARGET_KEYS = ("tokens", "mask", "segment_ids")   # a row's target; the rest conditions it
SHARED_FIELDS = ("seq_len", "source_len", "image_size", "image_channels", "packing", "tasks")


def is_mixture(data_cfg) -> bool:
  return bool(data_cfg.get("tasks", None))


def names(data_cfg) -> tuple[str, ...]:
  """The tasks' names in order; () without tasks."""
  return tuple(t.name for t in data_cfg.get("tasks", None) or ())


def weights(data_cfg) -> tuple[float, ...]:
  return tuple(float(t.weight) for t in data_cfg.tasks)


def loss_tasks(data_cfg) -> tuple:
  """((name, lambda_i), ...) for the train step (mgm/train.py mixture_loss_fn);
  () without tasks."""
  return tuple(zip(names(data_cfg), weights(data_cfg))) if is_mixture(data_cfg) else ()


def task_data(data_cfg, i: int):
  """The data config of task `i`: the shared data.* with the task's source and
  overrides, and no tasks (a single-task config the pipeline reads as is).
  ConfigError naming data.tasks[i].<field> for an override of no data field or
  of a shared row-shape field."""
  task = data_cfg.tasks[i]
  data = ml_collections.ConfigDict(
      {k: v for k, v in data_cfg.to_dict().items() if k != "tasks"})
  data.tasks = []
  for key, value in task.items():
    if key in ("name", "rate", "weight"):
      continue
    if key in SHARED_FIELDS or key not in data:
      why = ("is shared by every task's rows" if key in SHARED_FIELDS else
             "is not a data field")
      raise ConfigError(f"data.tasks[{i}].{key}", f"{why}; a task sets {TASK_FIELDS} and "
                        f"overrides of other data.* fields only")
    data[key] = value
  return data


def task_inputs(data_cfg, i: int) -> tuple[str, ...]:
  """The inputs (a subset of paired.INPUTS) task `i`'s examples carry."""
  data = task_data(data_cfg, i)
  return paired.inputs(data) if paired.is_paired(data) else ()


def inputs(data_cfg) -> tuple[str, ...]:
  """Every input some task carries, in paired.INPUTS order."""
  have = {name for i in range(len(data_cfg.tasks)) for name in task_inputs(data_cfg, i)}
  return tuple(name for name in paired.INPUTS if name in have)


def conform(row: dict, index: int, has: tuple[str, ...], data_cfg,
            all_inputs: tuple[str, ...]) -> dict:
  """One task's row in the mixture's schema (module doc): adds task, has_<input>,
  and filler inputs the task lacks."""
  out = dict(row, task=np.array([index], np.int32))
  for name in all_inputs:
    out[f"has_{name}"] = np.array([name in has])
    if name not in has:
      out[name] = filler(name, data_cfg)
  return out


def filler(name: str, data_cfg) -> np.ndarray:
  """The input a row without it carries: an EOS-only source, an all-zero image."""
  if name == "source":
    return paired.token_row("", data_cfg.source_len)
  return np.zeros((data_cfg.image_size, data_cfg.image_size, data_cfg.image_channels),
                  np.uint8)


def _conformed_rows(data_cfg, i, split, **kwargs) -> grain.IterDataset:
  all_inputs = inputs(data_cfg)
  has = task_inputs(data_cfg, i)
  rows = pipeline.task_rows(task_data(data_cfg, i), split, **kwargs)
  return rows.map(lambda row: conform(row, i, has, data_cfg, all_inputs))


def make_dataset(data_cfg, split: str, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, num_epochs: int | None = None) -> grain.IterDataset:
  """This process's mixed batches of `split` (as pipeline.make_dataset's): each
  task's rows (task i shuffled with seed + i) mixed by grain.IterDataset.mix with
  weights = the rates. Stops when any task's stream ends (training streams never do)."""
  local_batch = pipeline._local_batch_size(batch_size, process_index, process_count)
  parts = [_conformed_rows(data_cfg, i, split, seed=seed + i, process_index=process_index,
                           process_count=process_count, num_epochs=num_epochs)
           for i in range(len(data_cfg.tasks))]
  mixed = grain.IterDataset.mix(parts, weights=[float(t.rate) for t in data_cfg.tasks])
  return mixed.batch(local_batch, drop_remainder=split == "train")


def eval_batches(data_cfg, **kwargs) -> dict[str, list[dict]]:
  """Task name -> its fixed evaluation batches (pipeline.eval_batches of the task's
  data, in the mixture's schema)."""
  all_inputs = inputs(data_cfg)
  out = {}
  for i, name in enumerate(names(data_cfg)):
    has = task_inputs(data_cfg, i)
    batches = pipeline.eval_batches(task_data(data_cfg, i), **kwargs)
    out[name] = [_conform_batch(b, i, has, data_cfg, all_inputs) for b in batches]
  return out


def _conform_batch(batch: dict, index: int, has, data_cfg, all_inputs) -> dict:
  rows = len(batch["tokens"])
  out = dict(batch, task=np.full((rows, 1), index, np.int32))
  for name in all_inputs:
    out[f"has_{name}"] = np.full((rows, 1), name in has)
    if name not in has:
      out[name] = np.stack([filler(name, data_cfg)] * rows)
  return out


def task_sequence(data_cfg, *, batch_size: int, seed: int, steps: int) -> np.ndarray:
  """The task index of every training row of the first `steps` batches. [steps, B]"""
  dataset = make_dataset(data_cfg, "train", batch_size=batch_size, seed=seed)
  return np.stack([b["task"][:, 0] for b in itertools.islice(dataset, steps)])


def describe(data_cfg) -> str:
  """One line per task: name, rate, weight and its data line."""
  total = sum(float(t.rate) for t in data_cfg.tasks)
  return "\n".join(
      f"task {t.name!r}: rate {float(t.rate) / total:.3f} of rows, weight {float(t.weight):g}; "
      + pipeline.describe_corpus(task_data(data_cfg, i))
      for i, t in enumerate(data_cfg.tasks))


def paired_tasks(data_cfg) -> list[int]:
  """The indices of the tasks with an image or source (held-out generation)."""
  return [i for i in range(len(data_cfg.tasks)) if task_inputs(data_cfg, i)]


def cond_rows(examples: list[dict], data_cfg, i: int) -> dict:
  """The decoder's conditioning of task `i`'s `examples` (raw schema), as its
  training rows carry it: its inputs, filler for the others, task and has_<input>
  [N]. For generation (mgm/conditioned.py)."""
  data, all_inputs, has = task_data(data_cfg, i), inputs(data_cfg), task_inputs(data_cfg, i)
  rows = [conform(paired.encode_example(x, seq_len=1, source_len=data.source_len, inputs=has,
                                        blind=data.blind_inputs), i, has, data_cfg, all_inputs)
          for x in examples]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in TARGET_KEYS}


def sampled_task(data_cfg) -> int:
  """The task a mixture's samples are drawn as: its first task with an input
  (conditioned on held-out examples), else task 0 (from text prompts)."""
  return (paired_tasks(data_cfg) or [0])[0]


def prompt_cond(data_cfg, rows: int) -> dict | None:
  """Generation from text prompts by a mixture's model: as `sampled_task`, with
  every input absent; None without tasks."""
  if not is_mixture(data_cfg):
    return None
  cond = {"task": np.full((rows, 1), sampled_task(data_cfg), np.int32)}
  for name in inputs(data_cfg):
    cond[name] = np.stack([filler(name, data_cfg)] * rows)
    cond[f"has_{name}"] = np.zeros((rows, 1), bool)
  return cond
