"""Distillation from a teacher ensemble (issue 14 part 2; Hinton et al. 2015 §2).

`distill.teachers` names trained runs, comma-separated: a workdir, its
checkpoints/ directory, or one step directory in it. Each teacher's model is
built from its own saved config.json (any preset or granularity: a flat
student learns from an mgm3 teacher and vice versa; the student's
`model.vocab_size`), and its parameters are restored by
`checkpoint.restore_params` (the newest usable step, its checksum verified)
onto the student's mesh by the student's rules (`mesh.rules`). They are frozen:
an argument of the jitted train step (not constants baked into the program),
under `stop_gradient`, outside the optimizer and outside the student's
checkpoints; a resumed run reads them again from the teachers' workdirs.
summary.json records which step and parameters each teacher was
(`distill_teachers`: path, checkpoint, step, sha256).

The loss over the batch's target-mask tokens (the per-level auxiliary losses
are added to it as without distillation):

  L = (1 - alpha) CE(x, p_S) + alpha tau^2 KL(p_T || p_S)
  p_S = softmax(z_S / tau),  p_T = (1 / K) sum_k softmax(z_k / tau)

In a task mixture (data.tasks) each task's loss is blended so, over its own
target tokens, and L = sum_i lambda_i L_i (train.mixture_loss_fn). Teachers
there are plain text models (no encoders, no tasks), which read every row's
target as text, or models trained on the student's own data.tasks (same names,
same order), which read each row's task and inputs as the student does.

p_T is the ensemble's mean distribution (of probabilities, not of logits);
tau^2 keeps the soft term's gradients on the scale of the hard term's as tau
grows (Hinton et al.). metrics['distill_kl'] is KL(p_T || p_S) in nats per
token; metrics['loss'] stays the plain cross-entropy.
"""
import dataclasses
import hashlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
from absl import logging

from mgm import checkpoint, checksums, sharding
from mgm.data import mixture, paired
from mgm.errors import ConfigError, WorkdirError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, conditioning
from mgm.train import init_params
from mgm.workdir import with_model_defaults

FIELD = "distill.teachers"


def teacher_paths(config) -> list[str]:
  """The teachers named by `distill.teachers` ([] when it is '' : off);
  ConfigError for a list with an empty entry (',', 'a,,b')."""
  text = config.get("distill", {}).get("teachers", "")
  if not isinstance(text, str) or not text.strip():
    return []
  paths = [p.strip() for p in text.split(",")]
  if not all(paths):
    raise ConfigError(FIELD, f"{text!r} has an empty entry; give comma-separated run "
                      "directories, or '' for no distillation")
  return paths


def _refuse(path: str, problem: str):
  raise ConfigError(FIELD, f"teacher {path!r}: {problem}")


FORMS = "a trained run's workdir, its checkpoints/ directory or one step checkpoints/N"


def _run_dir(path: str) -> str:
  """The workdir of `path`, one of FORMS: the directory holding config.json."""
  path = os.path.abspath(os.path.expanduser(path)).rstrip("/")
  if not os.path.isdir(path):
    _refuse(path, f"is not a directory; give {FORMS}")
  parent = os.path.dirname(path)
  candidates = [path]
  if os.path.basename(path) == "checkpoints":
    candidates.append(parent)
  elif os.path.basename(path).isdigit() and os.path.basename(parent) == "checkpoints":
    candidates.append(os.path.dirname(parent))
  for candidate in candidates:
    if os.path.isfile(os.path.join(candidate, "config.json")):
      return candidate
  _refuse(path, f"is not {FORMS} (no config.json where one of those would have it); "
          "point it at one")


def teacher_config(path: str) -> mlc.ConfigDict:
  """The teacher run's saved config (model and data sections), fields added
  since it was written at their defaults (workdir.with_model_defaults)."""
  run = _run_dir(path)
  try:
    with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
      saved = with_model_defaults(json.load(f))
    model = dict(saved["model"])
    model["levels"] = [mlc.ConfigDict(l) for l in model.get("levels", [])]
    model["encoders"] = [mlc.ConfigDict(e) for e in model.get("encoders", []) or []]
    return mlc.ConfigDict({"model": model, "data": saved["data"]})
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    _refuse(path, f"its config.json cannot be read as an mgm run's ({type(e).__name__}: {e})")


def _has_step(path: str) -> bool:
  path = os.path.abspath(os.path.expanduser(path))
  dirs = (os.path.join(path, "checkpoints"), path)
  return os.path.basename(path).isdigit() or any(
      name.isdigit() for d in dirs if os.path.isdir(d) for name in os.listdir(d))


def check_config(config, teachers: bool = True) -> list:
  """What can be checked without restoring: distill.alpha in [0, 1]; with
  `teachers` (a run that trains), each teacher a run with a config.json and a
  checkpoint step, of the student's vocab_size, whose conditioning inputs (if
  any) the student's data feeds. Returns [(path, teacher config, teacher
  ModelSpec)]; ConfigError otherwise."""
  alpha = config.distill.alpha
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError("distill.alpha", f"must lie in [0, 1] (the KL term's weight), got "
                      f"{alpha!r}")
  found = []
  for path in teacher_paths(config) if teachers else ():
    cfg = teacher_config(path)
    try:
      spec = spec_lib.from_config(cfg.model)
    except ConfigError as e:
      _refuse(path, f"its saved model config does not build ({e})")
    if spec.vocab_size != config.model.vocab_size:
      _refuse(path, f"has vocab_size {spec.vocab_size} and the student "
              f"{config.model.vocab_size}; a teacher must predict the student's vocabulary")
    if not _has_step(path):
      _refuse(path, "holds no checkpoint step (a directory N/ in its checkpoints/); "
              "train it first, or name another run")
    _check_tasks(path, cfg, spec, config.data)
    _check_inputs(path, spec, config.data)
    found.append((path, cfg, spec))
  return found


def _check_tasks(path, cfg, spec, data):
  """A teacher with tasks knows the student's data.tasks (names, in order); in a
  mixture, a teacher without tasks has no encoders (on the rows of a task
  without its input it would read filler as if it were one)."""
  student = mixture.names(data)
  teacher = tuple(t["name"] for t in cfg.data.get("tasks", None) or ())   # saved: dicts
  if spec.num_tasks or teacher:
    if teacher != student:
      _refuse(path, f"was trained on the tasks {list(teacher)} and the student's data.tasks "
              f"are {list(student)}; a teacher with tasks must know the student's, in the "
              "same order")
  elif student and spec.encoders:
    _refuse(path, "has encoders but no tasks, and in the student's task mixture it would "
            "read filler inputs on the rows of tasks without them; use a teacher trained "
            "on the same data.tasks, or one without encoders")


def _check_inputs(path, spec, data):
  """A conditioned teacher reads what the student's batches hold, of its shape."""
  have = () if not spec.encoders else (
      mixture.inputs(data) if mixture.is_mixture(data) else
      paired.inputs(data) if paired.is_paired(data) else ())
  for e in spec.encoders:
    name = e.encoder_kind.input
    if name not in have:
      _refuse(path, f"its {e.kind} encoder reads {name!r}, which data.source="
              f"{data.source!r} does not give; use a teacher without it")
    shapes = ((e.image_size, data.image_size, e.channels, data.image_channels)
              if name == "image" else (e.max_len, data.source_len))
    if shapes[::2] != shapes[1::2]:
      _refuse(path, f"its {e.kind} encoder reads {name} of other dimensions {shapes[::2]} "
              f"than the student's data {shapes[1::2]}; use a teacher trained on this data")


@dataclasses.dataclass(frozen=True)
class Distill:
  """The static part of the distillation term: the teachers' models, alpha, tau."""
  models: tuple            # LM per teacher
  alpha: float
  temperature: float

  def bind(self, teacher_params) -> "Bound":
    """This term with these teachers' parameters: what train.loss_fn and
    train.mixture_loss_fn apply."""
    return Bound(self, teacher_params)

  def teacher_probs(self, teacher_params, batch):
    """p_T [B, T, V] (float32, the mean of the teachers' softmax(z / tau)) and the
    teachers' unit overflow (their update is refused like the student's)."""
    probs, overflow = 0.0, 0
    for model, params in zip(self.models, teacher_params):
      out = model.apply({"params": jax.lax.stop_gradient(params)}, batch["tokens"],
                        cond=conditioning(batch), method=LM.forward)
      probs = probs + jax.nn.softmax(out["logits"] / self.temperature, axis=-1)
      overflow = overflow + out["seg"].overflow
    return jax.lax.stop_gradient(probs / len(self.models)), overflow

  def blend(self, hard, kl):
    """(1 - alpha) hard + alpha tau^2 kl (any matching shapes)."""
    return (1.0 - self.alpha) * hard + self.alpha * self.temperature ** 2 * kl


@dataclasses.dataclass(frozen=True)
class Bound:
  """A Distill with its teachers' parameters (Distill.bind)."""
  distill: Distill
  params: tuple

  def __call__(self, loss, logits, batch, overflow):
    """(1 - alpha) loss + alpha tau^2 KL(p_T || p_S) over the batch's mask; metrics
    distill_kl and the unit overflow plus the teachers'. `loss` is the mean
    hard loss [], `logits` the student's [B, T, V]."""
    kl, teacher_overflow = self.token_kl(logits, batch)
    mask = batch["mask"]
    kl = jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return self.distill.blend(loss, kl), {"distill_kl": kl,
                                          "unit_overflow": overflow + teacher_overflow}

  def token_kl(self, logits, batch):
    """(KL(p_T || p_S) of every position [B, T] in nats, the teachers' unit overflow)."""
    probs, overflow = self.distill.teacher_probs(self.params, batch)
    return kl_per_token(probs, logits, self.distill.temperature), overflow


def kl_per_token(teacher_probs, student_logits, temperature: float):
  """KL(p_T || softmax(z_S / tau)) at every position in nats: sum_v p_T (log p_T -
  log p_S), with 0 log 0 = 0. [B, T, V], [B, T, V] -> [B, T]."""
  log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.sum(jax.scipy.special.xlogy(teacher_probs, teacher_probs)
                 - teacher_probs * log_student, axis=-1)


@dataclasses.dataclass
class Teachers:
  """The loaded teachers: the static `distill`, their params on the mesh (a
  tuple, one tree per teacher), those params' shardings, and a record of each."""
  distill: Distill
  params: tuple
  shardings: tuple
  records: list

  def bind_step(self, jitted_step):
    """(state, batch, teacher params) -> (state, batch) with these teachers."""
    return lambda state, batch: jitted_step(state, batch, self.params)


def _digest(params) -> str:
  """sha256 of this process's shard sums (checksums.checksums): one name for these values."""
  return hashlib.sha256(json.dumps(checksums.checksums(params), sort_keys=True)
                        .encode()).hexdigest()


def load(config, placement) -> Teachers | None:
  """Restore every teacher of `distill.teachers` onto `placement`'s mesh (None
  when off). ConfigError naming distill.teachers for a teacher whose config
  or checkpoint cannot be used; nothing is written."""
  models, params, shardings, records = [], [], [], []
  shape = (config.train.batch_size, config.data.seq_len)
  for path, cfg, spec in check_config(config):
    model = LM(spec, cfg.data.get("packing", "none"))
    boxed = jax.eval_shape(lambda r, m=model: init_params(m, r, shape), jax.random.key(0))
    placed = sharding.param_shardings(boxed, placement.rules, placement.mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            nn.meta.unbox(boxed), placed)
    try:
      restored, source = checkpoint.restore_params(path, abstract, field=FIELD)
    except WorkdirError as e:
      _refuse(path, f"no checkpoint of it restores ({e})")
    except ConfigError as e:
      _refuse(path, str(e).split(": ", 1)[-1])
    models.append(model)
    params.append(restored)
    shardings.append(placed)
    records.append({"path": os.path.abspath(path), "checkpoint": source,
                    "step": int(source.rsplit("/", 1)[-1]), "sha256": _digest(restored)})
    logging.info("distillation teacher %s: %s, sha256 %s", path, source, records[-1]["sha256"])
  if not models:
    return None
  distill = Distill(tuple(models), float(config.distill.alpha),
                    float(config.distill.temperature))
  return Teachers(distill, tuple(params), tuple(shardings), records)
