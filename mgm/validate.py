"""Config validation in one place, before anything is built, compiled or written.

Every field is checked here, including those only read at the end of a run
(sample.*, eval.*) or when the data is first read (data.*): the data source is
opened, the prompts are read, the first training batch is segmented (for
levels with a max_units) and the held-out rows scanned, so a run never trains
and then fails on its config. Each error is one `ConfigError` naming the field and the fix.
"""
import math
import os

import jax
import numpy as np

from mgm import adversarial as adv_lib
from mgm import conditioned, decode, distill, files, kinds, profiling, prompts, sharding
from mgm.data import mixture, noise, paired, pipeline, sources, tokenizer
from mgm.data.tokenizer import VOCAB_SIZE, encode
from mgm.errors import ConfigError, DataError
from mgm.model import segment
from mgm.model import spec as spec_lib

SOURCES = ("synthetic", "text", "tfds") + tuple(n for n in paired.REGISTRY.names() if n != "tfds")

POSITIVE_INTS = (
    "data.seq_len", "data.text_doc_bytes", "data.source_len", "data.image_size",
    "data.image_channels", "data.val_examples", "train.steps", "train.batch_size", "train.grad_accum",
    "train.log_every", "train.eval_every", "train.eval_batches",
    "checkpoint.every_steps", "checkpoint.keep", "sample.num_samples",
    "eval.prompt_tokens", "eval.new_tokens", "eval.beam_size", "adversarial.width",
    "adversarial.depth", "adversarial.heads")
NON_NEGATIVE_INTS = ("model.loss_chunk", "train.max_nonfinite_in_a_row", "eval.continuations",
                     "data.corpus_seed",
                     "eval.examples", "data.noise_seed")
INTS = ("seed", "sample.seed", "sample.max_new_tokens", "sample.min_new_tokens",
        "sample.top_k", "sample.beam_size")
NON_NEGATIVE_NUMBERS = ("train.warmup_steps", "train.weight_decay", "train.min_lr_ratio",
                        "checkpoint.every_minutes", "sample.temperature", "adversarial.weight")
POSITIVE_NUMBERS = ("train.lr", "train.grad_clip", "model.rope_base", "adversarial.lr",
                    "adversarial.gumbel_temperature", "distill.temperature")
NUMBERS = ("sample.top_p", "sample.length_penalty", "train.b1", "train.b2", "data.val_fraction",
           "distill.alpha")
BOOLS = ("data.blind_inputs", "checkpoint.keep_best", "sample.stop_at_eos", "model.qk_norm",
         "model.remat", "model.scan_layers")
STRINGS = ("data.source", "data.files", "data.tfds_name", "data.tfds_text_field",
           "data.tfds_train_split", "data.tfds_eval_split", "data.tfds_data_dir",
           "data.tfds_source_field", "data.tfds_target_field", "data.tfds_image_field",
           "data.noise",
           "checkpoint.init_from", "sample.strategy", "sample.prompt", "sample.prompt_file",
           "sample.banned", "sample.forced_prefix", "sample.image", "sample.source",
           "sample.source_file", "adversarial.discriminator", "distill.teachers")
# Fields that only mean something for one data source: set with another, refused.
SOURCE_ONLY = {"data.files": ("text", "pairs"), "data.tfds_name": ("tfds",),
               "data.tfds_data_dir": ("tfds",), "data.tfds_source_field": ("tfds",),
               "data.tfds_target_field": ("tfds",), "data.tfds_image_field": ("tfds",)}
# Bytes that never occur in UTF-8 text; banning all the others leaves only these.
NOT_IN_UTF8 = frozenset(tokenizer.NOT_IN_UTF8)


def get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def leaves(node, prefix=""):
  """(dotted field, value) of every leaf of a config: `model.levels[0].width`, ...
  Tuples of values (sample.stop, mesh.rules) and empty sections are one leaf each."""
  if hasattr(node, "items") and len(node):
    for key, value in node.items():
      yield from leaves(value, f"{prefix}.{key}" if prefix else key)
  elif isinstance(node, list):
    for i, value in enumerate(node):
      yield from leaves(value, f"{prefix}[{i}]")
  else:
    yield prefix, node


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_text(v):
  """A str that can be written as UTF-8 (no lone surrogates from undecodable argv)."""
  if not isinstance(v, str):
    return False
  try:
    v.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _check_finite(config):
  """NaN or infinity in any float field (a NaN temperature samples NUL bytes only)."""
  for field, value in leaves(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(field, f"must be a finite number, got {value!r}")


def _check_types_and_ranges(config):
  """Each field of the tables above: right type, right sign."""
  checks = ((POSITIVE_INTS, _is_int, lambda v: v > 0, "a positive integer"),
            (NON_NEGATIVE_INTS, _is_int, lambda v: v >= 0, "an integer >= 0"),
            (INTS, _is_int, lambda v: True, "an integer"),
            (NON_NEGATIVE_NUMBERS, _is_number, lambda v: v >= 0, "a number >= 0"),
            (POSITIVE_NUMBERS, _is_number, lambda v: v > 0, "a number > 0"),
            (NUMBERS, _is_number, lambda v: True, "a finite number"),
            (BOOLS, lambda v: isinstance(v, bool), lambda v: True, "True or False"),
            (STRINGS, _is_text, lambda v: True, "a UTF-8 string"))
  for fields, right_type, right_sign, what in checks:
    for field in fields:
      value = get(config, field)
      if not right_type(value) or not right_sign(value):
        raise ConfigError(field, f"must be {what}, got {value!r}")
  stop = config.sample.stop
  if not isinstance(stop, (tuple, list)) or not all(_is_text(s) for s in stop):
    raise ConfigError("sample.stop", f"must be a tuple of strings such as ('\\n\\n',), "
                      f"got {stop!r}")
  for i, level in enumerate(config.model.levels):
    weight = level.get("aux_weight", 0.0)
    if not _is_number(weight) or weight < 0:
      raise ConfigError(f"model.levels[{i}].aux_weight", f"must be a number >= 0, "
                        f"got {weight!r}")


def validate(config, mode: str = "train"):
  """Raise ConfigError for the first value that cannot work; reads the data source,
  the prompt file and the first held-out rows, writes nothing. Distillation
  teachers are read only by `mode` train (eval and sample never need them)."""
  _check_finite(config)
  _check_types_and_ranges(config)
  _validate_data(config.data)
  _validate_train(config.train)
  _validate_checkpoint(config.checkpoint, config.train)
  _validate_profile(config.profile.steps, config.train.steps)
  _validate_adversarial(config.adversarial)
  _validate_loss_chunk(config)
  spec = spec_lib.from_config(config.model)
  if spec.vocab_size < VOCAB_SIZE:
    raise ConfigError("model.vocab_size", f"{spec.vocab_size} is below the tokenizer's "
                      f"{VOCAB_SIZE} ids (256 bytes, PAD, BOS, EOS); use {VOCAB_SIZE}")
  spec_lib.check_hierarchy(spec.levels, config.data.seq_len)
  sharding.check_rules(config.mesh.rules)
  sharding.mesh_shape(config.mesh, jax.device_count())
  spec_lib.check_packing(config.data.packing)
  settings = decode.from_config(config.sample, config.model.vocab_size)
  if set(range(256)) - NOT_IN_UTF8 <= set(settings.banned):
    raise ConfigError("sample.banned", "bans every byte UTF-8 text uses; nothing readable "
                      "can be generated; ban fewer")
  if config.eval.prompt_tokens + config.eval.new_tokens > config.data.seq_len:
    raise ConfigError("eval.new_tokens", f"eval.prompt_tokens={config.eval.prompt_tokens} "
                      f"plus eval.new_tokens={config.eval.new_tokens} exceeds data.seq_len="
                      f"{config.data.seq_len}; lower one")
  mixed = _validate_tasks(config, spec)
  if not mixed:
    _open_source(config.data)
  _validate_units(config, spec)
  _validate_prompts(config, spec, settings)
  _validate_continuations(config)
  if not mixed:
    _validate_conditioning(config)
  _validate_distill(config, teachers=mode == "train")


def _validate_tasks(config, spec) -> bool:
  """data.tasks (mgm/data/mixture.py): each task's fields, its data opened as a
  single-task run's; model.num_tasks equal to their number; every input a task
  carries read by an encoder and every encoder fed by a task. Whether it is a mixture."""
  data = config.data
  tasks = data.get("tasks", None)
  if not tasks:
    if spec.num_tasks:
      raise ConfigError("model.num_tasks", f"{spec.num_tasks} task embeddings but data.tasks "
                        "is empty; set model.num_tasks=0 or list the tasks")
    return False
  seen = set()
  for i, task in enumerate(tasks):
    _validate_task(data, i, task, seen)
  if spec.num_tasks != len(tasks):
    raise ConfigError("model.num_tasks", f"is {spec.num_tasks}, and data.tasks lists "
                      f"{len(tasks)} tasks; set --config.model.num_tasks={len(tasks)}")
  if not any(float(t.weight) for t in tasks):
    raise ConfigError("data.tasks", "every task's weight is 0, so nothing would train; "
                      "give some task a weight > 0")
  if config.adversarial.weight:
    raise ConfigError("adversarial.weight", "the adversarial term is not built for task "
                      "mixtures (data.tasks); set it to 0 or train one task")
  for field in ("eval.continuations", "sample.image", "sample.source", "sample.source_file"):
    if get(config, field):
      raise ConfigError(field, "is not supported with data.tasks (a task mixture samples "
                        "its first task with inputs, or task 0); unset it")
  _validate_task_inputs(config, spec)
  return True


def _validate_task(data, i: int, task, seen: set):
  field = f"data.tasks[{i}]"
  for key in mixture.TASK_FIELDS:
    if key not in task:
      raise ConfigError(f"{field}.{key}", f"is missing; a task has {mixture.TASK_FIELDS}")
  if not isinstance(task.name, str) or not task.name.isidentifier():
    raise ConfigError(f"{field}.name", f"must be a name of letters, digits and _ (it names "
                      f"the task's metrics, loss_<name>), got {task.name!r}")
  if task.name in seen:
    raise ConfigError(f"{field}.name", f"{task.name!r} names two tasks; give each its own")
  seen.add(task.name)
  if task.source not in SOURCES:
    raise ConfigError(f"{field}.source", f"unknown source {task.source!r}; one of {SOURCES}")
  if not _is_number(task.rate) or task.rate <= 0:
    raise ConfigError(f"{field}.rate", f"a sampling rate must be a number > 0, got "
                      f"{task.rate!r}; drop the task to leave it out")
  if not _is_number(task.weight) or task.weight < 0:
    raise ConfigError(f"{field}.weight", f"a loss weight must be a number >= 0, got "
                      f"{task.weight!r}")
  single = mixture.task_data(data, i)
  try:
    _validate_data(single)
    _open_source(single)
  except ConfigError as e:   # name the task's field: data.X -> data.tasks[i].X
    raise ConfigError(e.field.replace("data.", f"{field}.", 1), str(e).split(": ", 1)[1]) \
        from None


def _validate_task_inputs(config, spec):
  """Every task's inputs have an encoder, every encoder a task, of the data's shapes."""
  data, read = config.data, set(spec.inputs)
  for i in range(len(data.tasks)):
    for name in mixture.task_inputs(data, i):
      if name not in read:
        raise ConfigError(f"data.tasks[{i}].source", f"{data.tasks[i].source!r} gives "
                          f"{name!r} and the model has no encoder reading it; add one to "
                          "model.encoders (one per modality) or drop the task")
  have = set(mixture.inputs(data))
  for k, e in enumerate(spec.encoders):
    name = e.encoder_kind.input
    if name not in have:
      raise ConfigError(f"model.encoders[{k}].kind", f"{e.kind} reads {name!r} and no task "
                        "of data.tasks gives it; drop the encoder or add a task with it")
    _check_encoder_shape(config, f"model.encoders[{k}]", e)


def _validate_loss_chunk(config):
  if config.model.get("loss_chunk", 0) and (config.adversarial.weight or
                                            config.distill.teachers):
    user = "adversarial.weight" if config.adversarial.weight else "distill.teachers"
    raise ConfigError("model.loss_chunk", f"{user} reads the full logits, which a chunked "
                      "loss never makes; set model.loss_chunk=0")


def _validate_adversarial(adv):
  try:
    adv_lib.DISCRIMINATORS.parse(adv.discriminator)
  except kinds.KindError as e:
    raise ConfigError("adversarial.discriminator", str(e)) from None
  if adv.discriminator == "transformer" and adv.width % adv.heads:
    raise ConfigError("adversarial.heads", f"{adv.heads} does not divide adversarial.width="
                      f"{adv.width}; pick a divisor")


def _validate_distill(config, teachers: bool):
  """distill.*: the teachers' configs and checkpoints are there and fit the
  student (mgm/distill.py check_config), and the first training batch fits
  each teacher's unit bounds (else its updates would all be refused)."""
  teachers = distill.check_config(config, teachers)
  if not teachers:
    return
  batch = next(iter(pipeline.make_dataset(config.data, "train", seed=config.seed,
                                          batch_size=config.train.batch_size)))
  for path, cfg, spec in teachers:
    excess = unit_excess(spec, batch["tokens"], config.data.seq_len,
                         cfg.data.get("packing", "none"))
    if excess:
      level, count, bound = excess
      raise ConfigError("distill.teachers", f"teacher {path!r}: the batch before step 1 has "
                        f"a sequence of {count} {spec.levels[level].units!r} units, more than "
                        f"its model.levels[{level}].max_units={bound}; lower data.seq_len or "
                        "use a teacher trained on sequences this long")


def _validate_conditioning(config):
  """sample.image / sample.source / sample.source_file, eval.examples and
  data.blind_inputs are about an encoder's input; a model with none
  (model.encoders unset) refuses them. With encoders, the data must feed them
  (_validate_encoder_inputs) and the sample inputs are read and checked here."""
  if config.model.get("encoders"):
    _validate_encoder_inputs(config, spec_lib.from_config(config.model))
    return
  if config.eval.examples:
    raise ConfigError("eval.examples", "scores generation from images or sources, and this "
                      "model has no encoders (model.encoders is empty); set it to 0 (text "
                      "models: eval.continuations)")
  for field in ("data.blind_inputs", "sample.image", "sample.source", "sample.source_file"):
    if get(config, field):
      raise ConfigError(field, "this model has no encoder to read it (model.encoders is "
                        "empty) and generates from text prompts only; unset it")


def _validate_encoder_inputs(config, spec):
  """The data feeds each encoder the input it reads, of the shape it reads:
  data.image_size / data.image_channels / data.source_len equal the encoders'
  image_size / channels / max_len; then the sample inputs are read (and checked)."""
  data = config.data
  if not paired.is_paired(data):
    raise ConfigError("data.source", f"{data.source!r} has no images or sources for the "
                      "model's encoders; use a paired source (shapes, translate, summarize, "
                      "copy, reverse, autoencode, pairs, or tfds with data.tfds_*_field)")
  have = paired.inputs(data)
  for i, e in enumerate(spec.encoders):
    field = f"model.encoders[{i}]"
    name = e.encoder_kind.input
    if name not in have:
      raise ConfigError(f"{field}.kind", f"{e.kind} reads {name!r}, and data.source="
                        f"{data.source!r} gives {list(have)}; use an encoder of those")
    _check_encoder_shape(config, field, e)
  conditioned.sample_inputs(config, spec)


def _check_encoder_shape(config, field: str, e):
  """The encoder reads the data's shape: image_size / channels / max_len equal
  data.image_size / data.image_channels / data.source_len."""
  pairs = ((("image_size", e.image_size, "data.image_size"),
            ("channels", e.channels, "data.image_channels")) if e.encoder_kind.input == "image"
           else (("max_len", e.max_len, "data.source_len"),))
  for attr, value, data_field in pairs:
    if value != get(config, data_field):
      raise ConfigError(f"{field}.{attr}", f"{value} differs from {data_field}="
                        f"{get(config, data_field)}; make them equal")


def _validate_data(data):
  if data.source not in SOURCES:
    raise ConfigError("data.source", f"unknown source {data.source!r}; one of {SOURCES}")
  for field, users in SOURCE_ONLY.items():
    if get(data, field.split(".", 1)[1]) and data.source not in users:
      raise ConfigError(field, f"is set but data.source={data.source!r}, which ignores it; "
                        f"add --config.data.source={users[0]} to use it, or leave it empty")
  if data.source in ("text", "pairs") and not data.files.strip():
    raise ConfigError("data.files", f"is empty but data.source={data.source!r}; give a glob "
                      "such as --config.data.files='~/corpus/*.txt' (pairs: *.jsonl or *.tsv)")
  if data.image_channels not in (1, 3):
    raise ConfigError("data.image_channels", f"must be 3 (RGB) or 1 (grey), got "
                      f"{data.image_channels!r}")
  if data.source == "tfds" and not data.tfds_name:
    raise ConfigError("data.tfds_name", "is empty but data.source='tfds'; give a dataset "
                      "name such as tiny_shakespeare")
  if not 0.0 < data.val_fraction < 1.0:
    raise ConfigError("data.val_fraction", f"must lie in (0, 1), got {data.val_fraction!r}")
  _validate_noise(data)


def _validate_noise(data):
  """autoencode's noise (mgm/data/noise.py), checked whatever data.source is: a
  known kind, each rate in [0, 1), delete + replace < 1, a mean span >= 1 byte."""
  if data.noise not in noise.KINDS:
    raise ConfigError("data.noise", f"unknown noise {data.noise!r}; use one of {noise.KINDS}")
  for name in ("density", "delete", "replace", "insert"):
    rate = data[f"noise_{name}"]
    if not _is_number(rate) or not 0.0 <= rate < 1.0:
      raise ConfigError(f"data.noise_{name}", f"a probability per byte must lie in [0, 1), "
                        f"got {rate!r}")
  if data.noise_delete + data.noise_replace >= 1.0:
    raise ConfigError("data.noise_replace", f"data.noise_delete={data.noise_delete} plus "
                      f"data.noise_replace={data.noise_replace} is not below 1 (a byte is "
                      "deleted or else replaced); lower one")
  span = data.noise_mean_span
  if not _is_number(span) or span < 1:
    raise ConfigError("data.noise_mean_span", f"a mean span of masked bytes must be a "
                      f"number >= 1, got {span!r}")


def _open_source(data):
  """Both splits of the data source (globs matched, files chunked, TFDS opened; for a
  paired task every pair file line and image checked and each split's first example made)."""
  try:
    for split in sources.SPLITS:
      examples = sources.make_source(data, split)
      if paired.is_paired(data) and len(examples):
        paired.encode_example(examples[0], seq_len=data.seq_len, source_len=data.source_len,
                              inputs=paired.inputs(data))
  except (TypeError, ValueError) as e:
    corpus = data.source == "synthetic" or (paired.is_paired(data) and isinstance(
        paired.task(data), paired.CorpusTask))
    if isinstance(e, ConfigError) or not corpus:
      raise
    raise DataError("data.synthetic", f"the synthetic corpus refuses {dict(data.synthetic)}: "
                    f"{e}") from None


def _validate_train(train):
  if train.warmup_steps > train.steps:
    raise ConfigError("train.warmup_steps", f"{train.warmup_steps} exceeds train.steps "
                      f"{train.steps}; lower it")
  for name in ("b1", "b2"):
    if not 0.0 <= train[name] < 1.0:
      raise ConfigError(f"train.{name}", f"an Adam beta must lie in [0, 1), got {train[name]!r}")
  if train.batch_size % train.grad_accum:
    raise ConfigError("train.grad_accum", f"{train.grad_accum} does not divide "
                      f"train.batch_size={train.batch_size} into equal micro-batches")
  if train.min_lr_ratio > 1.0:
    raise ConfigError("train.min_lr_ratio", f"{train.min_lr_ratio} > 1 would decay the "
                      "learning rate upwards; use a fraction of train.lr in [0, 1]")
  smoothing = train.label_smoothing
  if not _is_number(smoothing) or not 0.0 <= smoothing < 1.0:
    raise ConfigError("train.label_smoothing", f"must lie in [0, 1) (0 = off), got "
                      f"{smoothing!r}")


def _validate_profile(steps: str, train_steps: int):
  """profile.steps: '' (off) or 'a,b' with 1 <= a <= b <= train.steps."""
  try:
    trace = profiling.parse_steps(steps)
  except ValueError as e:
    raise ConfigError("profile.steps", str(e)) from None
  if trace and trace[1] > train_steps:
    raise ConfigError("profile.steps", f"the last step {trace[1]} is after train.steps="
                      f"{train_steps}, so the trace would never end; lower it")


def _validate_checkpoint(ckpt, train):
  if ckpt.keep_best and ckpt.every_steps % train.eval_every:
    raise ConfigError("checkpoint.keep_best", "ranks checkpoints by eval_bpb, so every "
                      f"checkpoint step needs an eval: checkpoint.every_steps={ckpt.every_steps} "
                      f"is not a multiple of train.eval_every={train.eval_every}; change one")
  if not ckpt.init_from:
    return
  path = files.path(ckpt.init_from)   # local or a URL (gs://...)
  if not path.is_dir():
    raise ConfigError("checkpoint.init_from", f"{ckpt.init_from!r} is not a directory; give "
                      "a workdir, its checkpoints/ directory or one step directory in it")
  has_step = path.name.isdigit() or any(
      p.name.isdigit() for d in (path / "checkpoints", path) if d.is_dir() for p in d.iterdir())
  if not has_step:
    raise ConfigError("checkpoint.init_from", f"{ckpt.init_from!r} holds no checkpoint step "
                      "(a directory N/ in it or in its checkpoints/); point it at a trained run")


def _validate_prompts(config, spec, settings):
  """Every prompt fits data.seq_len with sample.max_new_tokens and has no more units
  than a coarse level's model.levels[i].max_units (generation would overflow)."""
  seq_len = config.data.seq_len
  if settings.max_new >= seq_len:
    raise ConfigError("sample.max_new_tokens", f"{settings.max_new} leaves no room for a "
                      f"prompt within data.seq_len={seq_len}; lower it")
  for prompt in prompts.read_prompts(config):
    tokens = encode(prompt.text)
    if len(tokens) + settings.max_new > seq_len:
      raise ConfigError(prompt.field, f"{prompt.origin} is {len(tokens)} bytes; with "
                        f"sample.max_new_tokens={settings.max_new} that exceeds data.seq_len="
                        f"{seq_len}; shorten it or lower sample.max_new_tokens")
    excess = unit_excess(spec, tokens, seq_len, config.data.packing)
    if excess:
      level, count, bound = excess
      raise ConfigError(prompt.field, f"{prompt.origin} has {count} "
                        f"{spec.levels[level].units!r} units, more than model.levels[{level}]"
                        f".max_units={bound}; shorten it or raise model.levels[{level}].max_units")


def unit_excess(spec, tokens, seq_len: int, packing: str = "none"):
  """(level, units, max_units) of the first coarse level where a row of `tokens`
  ([T] or [B, T]) holds more units than its static bound (the most units of any
  row), else None; segmented as the model runs under `packing` (with
  document_mask, fixed patches restart at each document, so their count varies)."""
  documents = packing == "document_mask"
  coarse = spec.levels[:-1]
  coarse = segment.document_levels(coarse) if documents else coarse
  tokens = np.atleast_2d(np.asarray(tokens, np.int32))
  if not coarse or not tokens.size:
    return None
  seg = segment.segment(tokens, coarse, seq_len, documents=documents)
  for level, (count, bound) in enumerate(zip(seg.counts, seg.max_units)):
    if int(count.max()) > bound:
      return level, int(count.max()), bound
  return None


def _validate_units(config, spec):
  """The first training batch fits every level's max_units (else the train step would
  refuse its updates and the run stop at its first log step)."""
  packing = config.data.packing
  if packing == "none" and all(segment.fixed_patch(spec.levels, i)
                               for i in range(len(spec.levels) - 1)):
    return   # fixed units of one stream: the bound is exact
  batch = next(iter(pipeline.make_dataset(config.data, "train", seed=config.seed,
                                          batch_size=config.train.batch_size)))
  excess = unit_excess(spec, batch["tokens"], config.data.seq_len, packing)
  if excess:
    level, count, bound = excess
    raise ConfigError(f"model.levels[{level}].max_units", f"{bound} is too few: the batch "
                      f"before step 1 has a sequence of {count} {spec.levels[level].units!r} "
                      f"units; raise it (or lower data.seq_len, or set model.levels[{level}]"
                      ".max_len)")


def _validate_continuations(config):
  """eval.continuations needs held-out rows of eval.prompt_tokens + eval.new_tokens real
  tokens among the eval rows; reads the validation stream only until the first one."""
  cfg = config.eval
  if not cfg.continuations:
    return
  length, train = cfg.prompt_tokens + cfg.new_tokens, config.train
  max_rows = train.batch_size * train.eval_batches
  if not pipeline.held_out_rows(config.data, length=length, max_rows=max_rows, limit=1):
    raise ConfigError("eval.continuations", f"no held-out sequence among the {max_rows} "
                      f"eval rows has {length} tokens (eval.prompt_tokens={cfg.prompt_tokens} "
                      f"+ eval.new_tokens={cfg.new_tokens}); lower those, or set "
                      "eval.continuations=0")
