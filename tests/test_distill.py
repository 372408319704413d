"""Distillation from a teacher ensemble (mgm/distill.py, issue 14 part 2).

Tiny teachers (a flat one and an mgm3 one) are trained a few steps once per
module and saved as runs (config.json + an Orbax checkpoint), as launch.py
leaves them. The tests: alpha = 0 is plain training bit for bit; a student
that is its teacher (tau = 1) has a zero KL term and gradient; the ensemble's
KL equals a numpy computation over averaged probabilities; a flat student
learns from an mgm3 teacher through run_mode (and resumes re-reading it);
unusable teachers are refused naming distill.teachers before anything is
written; a sharded step with a teacher equals the one-device step. Within a
task mixture: the total is sum_i lambda_i of each task's blended loss computed
on its own rows, two micro-batches equal one pass, a 2x2x2 mesh step equals the
one-device step, and teachers that do not know the student's tasks are refused.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.lm import get_config
from mgm import checkpoint, loop, sharding
from mgm.data import pipeline
from mgm.errors import ConfigError
from mgm.setup import Setup
from mgm.train import loss_fn
from mgm.workdir import check_and_save_config

STEPS = 3


def one_device_mesh(config):
  return sharding.make_mesh(config.mesh, jax.devices()[:1])


def tiny(model="flat", **distill_fields):
  config = get_config(f"model={model},size=tiny")
  config.distill.update(distill_fields)
  return config


@pytest.fixture(scope="module")
def batches():
  data = pipeline.make_dataset(tiny().data, "train", batch_size=8, seed=0)
  return [batch for _, batch in zip(range(STEPS), data)]


def steps(setup, batches, state=None):
  """The state after one train step per batch, and the last step's metrics."""
  state = setup.state if state is None else state
  for batch in batches:
    state, metrics = setup.train_step(state, setup.placement.global_batch(batch))
  return state, metrics


def save_run(workdir, config, state):
  """A run's files as training leaves them: config.json and checkpoints/N."""
  mngr = checkpoint.manager(str(workdir), config.checkpoint, enable_async=False)
  checkpoint.save(mngr, int(state.step), state, force=True)
  mngr.wait_until_finished()
  mngr.close()
  check_and_save_config(str(workdir), config)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, batches):
  """{'flat': workdir, 'mgm3': workdir}: tiny teachers trained STEPS steps."""
  runs = {}
  for model in ("flat", "mgm3"):
    config = tiny(model)
    setup = Setup.create(config, mesh=one_device_mesh(config))
    workdir = tmp_path_factory.mktemp(f"teacher_{model}")
    save_run(workdir, config, steps(setup, batches)[0])
    runs[model] = str(workdir)
  return runs


def test_alpha_zero_is_plain_training(teachers, batches):
  config = tiny(teachers=teachers["mgm3"], alpha=0.0)
  plain = Setup.create(config, mesh=one_device_mesh(config))
  taught = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  assert plain.teachers is None and taught.teachers is not None
  (plain_state, plain_metrics), (state, metrics) = steps(plain, batches), steps(taught, batches)
  assert float(metrics["distill_kl"]) > 0.01   # the teacher ran, and disagrees
  # equal up to rounding: XLA fuses the two programs differently (measured: at
  # most 6e-8 apart after 3 steps; alpha = 0.01 already fails these checks)
  np.testing.assert_allclose(float(metrics["loss"]), float(plain_metrics["loss"]), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.params, plain_state.params)


def _grads(setup, params, batch):
  """(total, metrics, gradient) of the student's loss_fn with the teachers' term."""

  @jax.jit
  def run(params, teacher_params, batch):
    term = setup.teachers.distill.bind(teacher_params)
    (total, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, setup.model, batch, distill=term), has_aux=True)(params)
    return total, metrics, grads
  return run(params, setup.teachers.params, {k: jnp.asarray(v) for k, v in batch.items()})


def test_a_student_that_is_its_teacher_has_zero_kl_and_gradient(teachers, batches):
  config = tiny(teachers=teachers["flat"], alpha=1.0, temperature=1.0)
  setup = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree))))
  # a fresh student: the KL term and its gradient are far from zero
  _, fresh, fresh_grads = _grads(setup, setup.state.params, batches[0])
  assert float(fresh["distill_kl"]) > 0.01 and norm(fresh_grads) > 1e-2
  # the student initialised as the teacher (as checkpoint.init_from does): both
  # vanish, up to rounding
  student, _ = checkpoint.restore_params(teachers["flat"], checkpoint.abstract(setup.state.params))
  total, same, grads = _grads(setup, student, batches[0])
  assert abs(float(same["distill_kl"])) < 1e-6 and abs(float(total)) < 1e-6
  assert norm(grads) < 1e-4 * norm(fresh_grads)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_the_ensemble_averages_the_teachers_probabilities(teachers, batches):
  tau, alpha = 2.0, 0.3
  config = tiny(teachers=f"{teachers['flat']},{teachers['mgm3']}", alpha=alpha,
                temperature=tau)
  setup = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  batch = batches[1]
  total, metrics, _ = _grads(setup, setup.state.params, batch)
  # by hand: each teacher's softmax(z / tau), averaged; KL over the mask's tokens
  logits = lambda model, params: np.asarray(jax.jit(
      lambda p, t: model.apply({"params": p}, t))(params, batch["tokens"]), np.float64)
  probs = np.mean([_softmax(logits(m, p) / tau) for m, p in zip(
      setup.teachers.distill.models, setup.teachers.params)], axis=0)
  student = logits(setup.model, setup.state.params)
  log_q = np.log(_softmax(student / tau))
  per_token = np.sum(probs * (np.log(probs) - log_q), -1)
  kl = np.sum(per_token * batch["mask"]) / np.sum(batch["mask"])
  np.testing.assert_allclose(float(metrics["distill_kl"]), kl, rtol=1e-4)
  ce = float(metrics["loss"])
  np.testing.assert_allclose(float(total), (1 - alpha) * ce + alpha * tau ** 2 * kl, rtol=1e-4)


def test_a_flat_student_learns_from_an_mgm3_teacher_and_resumes(teachers, tmp_path):
  config = tiny(teachers=teachers["mgm3"], alpha=0.5)
  config.train.update(steps=2, warmup_steps=1, log_every=1, eval_every=2, eval_batches=1)
  config.sample.update(num_samples=1, max_new_tokens=4)
  workdir = tmp_path / "student"
  first = loop.run_mode(config, str(workdir), "train")
  record, = first["distill_teachers"]
  assert record["step"] == STEPS and record["checkpoint"].endswith(f"checkpoints/{STEPS}")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2] and all(r["distill_kl"] > 0 for r in rows)
  # the student's checkpoint holds the student only; a resumed run reads the teacher again
  saved = checkpoint.read_only_manager(str(workdir / "checkpoints")).item_metadata(2)
  assert set(saved.state.tree) == {"step", "params", "opt_state", "skipped_steps",
                                   "nonfinite_in_a_row", "adversarial"}   # None: no discriminator
  config.train.steps = 3
  second = loop.run_mode(config, str(workdir), "train")
  assert second["steps"] == 3 and second["distill_teachers"] == first["distill_teachers"]
  # evaluating the student needs no teacher (the config's may be gone)
  config.distill.teachers = str(tmp_path / "deleted_teacher")
  assert loop.run_mode(config, str(workdir), "eval")["step"] == 3


def _copy(run, tmp_path, name):
  target = tmp_path / name
  shutil.copytree(run, target)
  return target


def _different_vocab(teachers, tmp_path):
  run = _copy(teachers["flat"], tmp_path, "vocab_teacher")
  saved = json.loads((run / "config.json").read_text())
  saved["model"]["vocab_size"] = 300
  (run / "config.json").write_text(json.dumps(saved))
  return str(run), "vocab_size 300"


def _flipped_bytes(teachers, tmp_path):
  """Every chunk of the saved params changed on disk: no step restores."""
  run = _copy(teachers["flat"], tmp_path, "damaged_teacher")
  for chunk in (run / "checkpoints").rglob("d/*"):
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
  return str(run), "no checkpoint of it restores"


def _empty_dir(teachers, tmp_path):
  (tmp_path / "empty").mkdir()
  return str(tmp_path / "empty"), "no config.json"


def _inside_a_run(teachers, tmp_path):
  """A folder of a trained run that is neither it nor its checkpoints."""
  run = _copy(teachers["flat"], tmp_path, "whole_run")
  (run / "samples").mkdir(exist_ok=True)
  return str(run / "samples"), "is not a trained run's workdir, its checkpoints/"


def _no_checkpoint(teachers, tmp_path):
  run = tmp_path / "untrained"
  check_and_save_config(str(run), tiny())
  return str(run), "no checkpoint step"


def _conditioned(teachers, tmp_path):
  """A captioning teacher for a student whose data has no images."""
  from configs.caption import get_config as caption_config
  run = tmp_path / "captioner"
  check_and_save_config(str(run), caption_config("tiny"))
  (run / "checkpoints" / "1").mkdir(parents=True)
  return str(run), "reads 'image'"


@pytest.mark.parametrize("make", [_different_vocab, _flipped_bytes, _empty_dir,
                                  _inside_a_run, _no_checkpoint, _conditioned])
def test_an_unusable_teacher_is_refused_before_anything_is_written(make, teachers, tmp_path):
  path, problem = make(teachers, tmp_path)
  config = tiny(teachers=f"{teachers['mgm3']},{path}")
  workdir = tmp_path / "student"
  with pytest.raises(ConfigError) as error:
    loop.run_mode(config, str(workdir), "train")
  assert error.value.field == "distill.teachers"
  assert path in str(error.value) and problem in str(error.value), str(error.value)
  assert "\n" not in str(error.value)
  assert not workdir.exists(), "a refused run writes nothing"


def test_a_teacher_list_with_an_empty_entry_is_refused(teachers, tmp_path):
  config = tiny(teachers=f"{teachers['flat']},,")
  with pytest.raises(ConfigError, match="has an empty entry") as error:
    loop.run_mode(config, str(tmp_path / "student"), "train")
  assert error.value.field == "distill.teachers"
  assert not (tmp_path / "student").exists()


def test_a_teacher_is_its_workdir_its_checkpoints_or_one_step(teachers):
  from mgm import distill
  run = teachers["mgm3"]
  step = max((p for p in os.listdir(os.path.join(run, "checkpoints")) if p.isdigit()), key=int)
  for path in (run, os.path.join(run, "checkpoints"), os.path.join(run, "checkpoints", step)):
    (found,) = distill.check_config(tiny(teachers=path))
    assert len(found[2].levels) == 3, path     # the mgm3 run's own model


def test_a_sharded_step_with_a_teacher_equals_the_one_device_step(teachers, batches):
  config = tiny(teachers=teachers["mgm3"], alpha=0.5)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  sharded = Setup.create(config, mesh=sharding.make_mesh(config.mesh), teachers=True)
  placed = jax.tree.leaves(sharded.teachers.params[0])
  assert any(not a.sharding.is_fully_replicated for a in placed)   # laid out like the student
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  single = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  (state, metrics), (ref_state, ref) = steps(sharded, batches[:2]), steps(single, batches[:2])
  for key in ("loss", "distill_kl", "total_loss"):
    np.testing.assert_allclose(float(metrics[key]), float(ref[key]), rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, ref_state.params)


# -- distillation within a task mixture ----------------------------------------

def mixture_student(teacher_runs: str, alpha=0.5, temperature=2.0):
  """A tiny conditioned student on lm + copy (weights 0.5 and 2) distilled from
  `teacher_runs` (comma-separated)."""
  from test_mixture import task, text_config
  c = text_config([task("lm", "synthetic", weight=0.5), task("copy", "copy", weight=2.0)])
  c.distill.update(teachers=teacher_runs, alpha=alpha, temperature=temperature)
  return c


def mixture_batches(config, count):
  data = pipeline.make_dataset(config.data, "train", batch_size=config.train.batch_size, seed=1)
  return [jax.tree.map(jnp.asarray, b) for _, b in zip(range(count), data)]


def test_in_a_mixture_each_task_blends_its_own_tokens_and_the_total_is_their_weighted_sum(
    teachers):
  """L = sum_i lambda_i [(1 - alpha) CE_i + alpha tau^2 KL_i], each task's terms over
  its own rows computed on their own by loss_fn; two micro-batches give the same
  loss, metrics and gradient as one pass."""
  from mgm.data import mixture
  from mgm.train import accumulated_grads, mixture_loss_fn
  config = mixture_student(teachers["flat"])   # ensembles: the tests above and below
  setup = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  term = setup.teachers.distill.bind(setup.teachers.params)
  model, params, tasks = setup.model, setup.state.params, mixture.loss_tasks(config.data)
  batch = mixture_batches(config, 1)[0]
  total, metrics = jax.jit(lambda p, b: mixture_loss_fn(p, model, b, tasks, distill=term))(
      params, batch)
  expected = 0.0
  for index, (name, weight) in enumerate(tasks):
    rows = np.flatnonzero(np.asarray(batch["task"][:, 0]) == index)
    assert 0 < len(rows) < len(batch["task"]), name
    alone, alone_metrics = loss_fn(params, model, jax.tree.map(lambda x: x[rows], batch),
                                   distill=term)
    assert float(alone_metrics["distill_kl"]) > 0
    expected += weight * float(alone)
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
  run = jax.jit(lambda p, b, accum: accumulated_grads(p, model, b, accum, tasks=tasks,
                                                      distill=term), static_argnums=2)
  (one, one_metrics, one_grads), (two, two_metrics, two_grads) = run(params, batch, 1), \
      run(params, batch, 2)
  np.testing.assert_allclose(float(two), float(one), rtol=1e-5)
  for key in ("loss", "distill_kl", "loss_lm", "loss_copy"):
    np.testing.assert_allclose(float(two_metrics[key]), float(one_metrics[key]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               two_grads, one_grads)


def test_a_sharded_mixture_step_with_teachers_equals_the_one_device_step(teachers):
  config = mixture_student(f"{teachers['flat']},{teachers['mgm3']}")
  config.mesh.update(data=2, fsdp=2, tensor=2)
  sharded = Setup.create(config, mesh=sharding.make_mesh(config.mesh), teachers=True)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  single = Setup.create(config, mesh=one_device_mesh(config), teachers=True)
  batches = mixture_batches(config, 2)
  (state, metrics), (ref_state, ref) = steps(sharded, batches), steps(single, batches)
  assert float(metrics["distill_kl"]) > 0 and int(metrics["skipped_steps"]) == 0
  for key in ("loss", "distill_kl", "total_loss", "loss_lm", "loss_copy"):
    np.testing.assert_allclose(float(metrics[key]), float(ref[key]), rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, ref_state.params)


def _fake_run(tmp_path, name, config):
  run = tmp_path / name
  check_and_save_config(str(run), config)
  (run / "checkpoints" / "1").mkdir(parents=True)
  return str(run)


@pytest.mark.parametrize("case", ["captioner without tasks", "other tasks",
                                  "a mixture's teacher for a one-task student"])
def test_a_teacher_that_does_not_fit_the_student_s_tasks_is_refused(case, teachers, tmp_path):
  from configs.caption import get_config as caption_config
  student = mixture_student(teachers["flat"])
  if case == "captioner without tasks":
    path, problem = _fake_run(tmp_path, "captioner", caption_config("tiny")), "encoders but no tasks"
  elif case == "other tasks":
    other = mixture_student("")
    other.data.tasks[1].name = "echo"
    path, problem = _fake_run(tmp_path, "other", other), "['lm', 'echo']"
  else:
    path, problem = _fake_run(tmp_path, "mixture", mixture_student("")), "['lm', 'copy']"
    student = tiny()
  student.distill.teachers = f"{teachers['flat']},{path}"
  workdir = tmp_path / "student"
  with pytest.raises(ConfigError) as error:
    loop.run_mode(student, str(workdir), "train")
  assert error.value.field == "distill.teachers" and path in str(error.value)
  assert problem in str(error.value), str(error.value)
  assert not workdir.exists(), "a refused run writes nothing"
