"""Task mixtures (issue 14, part 1; mgm/data/mixture.py): the tasks drawn at
their rates by Grain's mixing, resume of the task sequence, the loss
L = sum_i lambda_i L_i (a zero weight adds nothing to the gradient; grad_accum
is exact), the task marker (teacher-forced == incremental), a memory-less row,
refusals before anything is written, and the preset end to end."""
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from configs import lm, multitask
from mgm import checkpoint, loop
from mgm.data import mixture, pipeline
from mgm.data.tokenizer import EOS, PAD
from mgm.errors import ConfigError
from mgm.model import incremental
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, token_loss
from mgm.nn.cross_attention import CrossAttention
from mgm.train import accumulated_grads, init_params, mixture_loss_fn
from test_data import assert_batches_equal, take

SEQ, SOURCE, BATCH = 32, 32, 8


def task(name, source, rate=1.0, weight=1.0, **overrides):
  return mlc.ConfigDict(dict(name=name, source=source, rate=rate, weight=weight, **overrides))


def text_config(tasks, encoders=True):
  """A tiny flat decoder (+ a tiny text encoder) on `tasks`."""
  c = lm.get_config("tiny")
  c.data.update(seq_len=SEQ, source_len=SOURCE, val_examples=16, tasks=tasks)
  c.model.num_tasks = len(tasks)
  c.eval.update(prompt_tokens=8, new_tokens=8)
  c.sample.max_new_tokens = 8
  if encoders:
    c.model.encoders = [mlc.ConfigDict(dict(kind="text", width=32, depth=1, heads=2, patch=1,
                                            max_len=SOURCE, image_size=0, channels=3,
                                            mlp_ratio=2))]
    c.model.levels[0].cross_attention = True
  return c


RATES = {"lm": 3.0, "copy": 1.0, "translate": 2.0}


def rate_config():
  return text_config([task("lm", "synthetic", RATES["lm"]), task("copy", "copy", RATES["copy"]),
                      task("translate", "translate", RATES["translate"])])


def test_the_mixture_draws_each_task_at_its_rate_and_rows_share_one_schema():
  c = rate_config()
  batches = take(pipeline.make_dataset(c.data, "train", batch_size=BATCH, seed=3), 40)
  tasks = np.concatenate([b["task"][:, 0] for b in batches])
  n, total = len(tasks), sum(RATES.values())
  for i, name in enumerate(mixture.names(c.data)):
    p = RATES[name] / total
    assert abs(np.sum(tasks == i) - n * p) <= 3 * math.sqrt(n * p * (1 - p)), (name, tasks)
  for b in batches:
    lm_rows = b["task"][:, 0] == 0
    assert (b["has_source"][:, 0] == ~lm_rows).all()
    assert (b["source"][lm_rows][:, 0] == EOS).all() and (b["source"][lm_rows][:, 1:] == PAD).all()
    assert (b["source"][~lm_rows][:, 1] != PAD).all()   # copy/translate rows read a source
    assert b["tokens"].shape == (BATCH, SEQ) and b["task"].dtype == np.int32


def test_resume_reproduces_the_task_sequence_bit_for_bit():
  c = rate_config()
  make = lambda: pipeline.make_dataset(c.data, "train", batch_size=BATCH, seed=5)
  for done in (0, 7):   # 0: no packing remainder (grain's (-1, -1), pipeline.py)
    it = iter(make())
    take(it, done)
    state = json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it
    expected = take(it, 6)
    resumed = iter(make())
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 6), expected)


def test_a_checkpoint_resumes_the_task_sequence(tmp_path):
  """Through the checkpoint code a run uses: the mixed iterator saved with a step
  and restored into a fresh one continues with the same rows."""
  c = rate_config()
  make = lambda: iter(pipeline.make_dataset(c.data, "train", batch_size=BATCH, seed=2))
  state = {"w": jnp.arange(3.0)}
  it = make()
  take(it, 4)
  mngr = checkpoint.manager(str(tmp_path), c.checkpoint)
  checkpoint.save(mngr, 4, state, it, force=True)
  mngr.wait_until_finished()
  expected = take(it, 5)
  resumed = make()
  _, step = checkpoint.restore_newest(mngr, checkpoint.abstract(state), resumed)
  assert step == 4
  assert_batches_equal(take(resumed, 5), expected)


@pytest.fixture(scope="module")
def model_and_batch():
  """A tiny conditioned decoder with two tasks (lm without memory, copy), its
  parameters and one mixed batch (as jnp arrays)."""
  c = text_config([task("lm", "synthetic"), task("copy", "copy")])
  model = LM(spec_lib.from_config(c.model), c.data.packing)
  batch = next(iter(pipeline.make_dataset(c.data, "train", batch_size=BATCH, seed=1)))
  assert 0 < batch["task"].sum() < BATCH   # both tasks in the batch
  params = jax.jit(lambda r: nn.meta.unbox(init_params(model, r, (BATCH, SEQ))))(
      jax.random.key(0))
  return model, params, jax.tree.map(jnp.asarray, batch)


def rows_of(batch, index) -> np.ndarray:
  return np.flatnonzero(np.asarray(batch["task"][:, 0]) == index)


def task_loss(model, params, batch, rows):
  """L_i computed on its own: the rows of one task (`rows`) alone through the model."""
  sub = jax.tree.map(lambda x: x[rows], batch)
  cond = {k: sub[k] for k in ("source", "task", "has_source")}
  logits = model.apply({"params": params}, sub["tokens"], cond=cond)
  return token_loss(logits, sub["tokens"], sub["mask"])[0]


def test_the_total_loss_is_the_weighted_sum_of_separately_computed_task_losses(model_and_batch):
  model, params, batch = model_and_batch
  weights = (0.3, 2.0)
  total, metrics = jax.jit(lambda p, b: mixture_loss_fn(
      p, model, b, (("lm", weights[0]), ("copy", weights[1]))))(params, batch)
  separate = [float(task_loss(model, params, batch, rows_of(batch, i))) for i in range(2)]
  np.testing.assert_allclose(float(total), weights[0] * separate[0] + weights[1] * separate[1],
                             rtol=2e-5)
  np.testing.assert_allclose([float(metrics["loss_lm"]), float(metrics["loss_copy"])], separate,
                             rtol=2e-5)
  tokens = np.asarray(batch["mask"]).sum(1)
  assert float(metrics["tokens_copy"]) == tokens[np.asarray(batch["task"][:, 0]) == 1].sum()


def test_a_zero_weight_task_adds_nothing_to_the_gradient(model_and_batch):
  model, params, batch = model_and_batch
  grad = jax.jit(jax.grad(lambda p, w: mixture_loss_fn(
      p, model, batch, (("lm", 0.7), ("copy", w)))[0]))
  lm_rows = rows_of(batch, 0)
  alone = jax.jit(jax.grad(lambda p: 0.7 * task_loss(model, p, batch, lm_rows)))
  zero, with_copy, lm_only = grad(params, 0.0), grad(params, 1.0), alone(params)
  close = lambda a, b: all(np.allclose(x, y, rtol=1e-4, atol=1e-7)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert close(zero, lm_only)
  assert not close(with_copy, lm_only)   # the copy rows do move the parameters at weight 1


def test_grad_accum_gives_the_one_pass_loss_metrics_and_gradient(model_and_batch):
  model, params, batch = model_and_batch
  tasks = (("lm", 0.5), ("copy", 1.5))
  run = jax.jit(lambda p, b, accum: accumulated_grads(p, model, b, accum, tasks=tasks),
                static_argnums=2)
  (one, m1, g1), (four, m4, g4) = run(params, batch, 1), run(params, batch, 4)
  np.testing.assert_allclose(float(four), float(one), rtol=1e-5)
  for key in ("loss", "loss_lm", "loss_copy", "tokens_lm", "tokens_copy"):
    np.testing.assert_allclose(float(m4[key]), float(m1[key]), rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_task_marker_changes_predictions_and_decoding_matches_teacher_forcing(
    model_and_batch):
  model, params, batch = model_and_batch
  row = jax.tree.map(lambda x: x[:1], batch)
  cond = lambda t: {"source": row["source"], "has_source": row["has_source"],
                    "task": jnp.full((1, 1), t, jnp.int32)}
  tokens = row["tokens"]
  forward = jax.jit(lambda t: model.apply({"params": params}, tokens, cond=cond(t)))
  assert not np.allclose(forward(0), forward(1), atol=1e-4)   # the decoder knows the task
  n = 5
  prompt = jnp.where(jnp.arange(SEQ) < n, tokens, PAD)

  @jax.jit
  def decode(t):
    first, state = incremental.prefill(model, params, prompt, jnp.array([n]), cond(t))
    return first, incremental.step(model, params, state, tokens[:, n])[0]   # absorbs x_n

  for t in (0, 1):
    first, logits = decode(t)
    np.testing.assert_allclose(first[0, n], forward(t)[0, n], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[0], forward(t)[0, n + 1], rtol=1e-4, atol=1e-4)


def test_a_row_reads_only_the_inputs_its_task_has():
  """Two encoders fused by attention:K (whose own slots are always real): a
  caption row ignores the source slot, an lm row both inputs."""
  c = multitask.get_config("tiny")
  c.model.update(fusion="attention:2")
  c.data.update(seq_len=SEQ)
  model = LM(spec_lib.from_config(c.model), c.data.packing)
  batch = next(iter(pipeline.make_dataset(c.data, "train", batch_size=BATCH, seed=0)))
  params = jax.jit(lambda r: nn.meta.unbox(init_params(model, r, (BATCH, SEQ))))(
      jax.random.key(0))
  forward = jax.jit(lambda b: model.apply({"params": params}, b["tokens"], cond={
      k: b[k] for k in ("image", "source", "task", "has_image", "has_source")}))
  noise = dict(batch, source=np.full_like(batch["source"], ord("x")),
               image=np.full_like(batch["image"], 200))
  caption_noise = dict(batch, source=noise["source"])
  task = batch["task"][:, 0]
  lm_rows, caption_rows = task == 0, task == 1
  assert lm_rows.any() and caption_rows.any()
  base = np.asarray(forward(batch))
  np.testing.assert_array_equal(np.asarray(forward(noise))[lm_rows], base[lm_rows])
  np.testing.assert_array_equal(np.asarray(forward(caption_noise))[caption_rows],
                                base[caption_rows])
  assert not np.allclose(np.asarray(forward(noise))[caption_rows], base[caption_rows])


def test_a_row_with_an_all_masked_memory_is_finite_and_reads_nothing():
  attend = CrossAttention(width=16, heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))
  memory = {"x": jax.random.normal(jax.random.key(1), (2, 4, 8)),
            "mask": jnp.array([[False] * 4, [True, True, False, False]])}
  out, _ = jax.jit(attend.init_with_output)(jax.random.key(2), x, memory)
  assert np.isfinite(out).all()
  assert (out[0] == 0).all() and np.abs(out[1]).sum() > 0


# -- refusals --------------------------------------------------------------------

REFUSALS = {
    "unknown source": (lambda c: c.data.tasks[1].update(source="parquet"),
                       "data.tasks[1].source"),
    "rate 0": (lambda c: c.data.tasks[0].update(rate=0.0), "data.tasks[0].rate"),
    "negative weight": (lambda c: c.data.tasks[1].update(weight=-1.0), "data.tasks[1].weight"),
    "duplicate name": (lambda c: c.data.tasks[1].update(name="lm"), "data.tasks[1].name"),
    "an input no encoder reads": (lambda c: c.data.tasks[1].update(source="shapes"),
                                  "data.tasks[1].source"),
    "num_tasks differs": (lambda c: c.model.update(num_tasks=3), "model.num_tasks"),
    "a shared field overridden": (lambda c: c.data.tasks[0].update(seq_len=16),
                                  "data.tasks[0].seq_len"),
    "a bad override": (lambda c: c.data.tasks[0].update(val_fraction=2.0),
                       "data.tasks[0].val_fraction"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_task_is_refused_naming_its_field_before_anything_is_written(tmp_path, case):
  c = text_config([task("lm", "synthetic"), task("copy", "copy")])
  mutate, field = REFUSALS[case]
  mutate(c)
  with pytest.raises(ConfigError) as error:
    loop.run_mode(c, str(tmp_path / "w"), "train")
  assert error.value.field == field, str(error.value)
  assert not (tmp_path / "w").exists()


# -- the preset ----------------------------------------------------------------

def test_the_multitask_preset_trains_at_tiny_size_and_writes_per_task_metrics(tmp_path):
  c = multitask.get_config("tiny")
  c.train.update(steps=2, eval_every=2, log_every=1, eval_batches=1, warmup_steps=1)
  c.checkpoint.every_steps = 2
  c.eval.examples = 1
  summary = loop.run_mode(c, str(tmp_path), "train")
  names = mixture.names(c.data)
  assert names == ("lm", "caption", "translate", "copy")
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  for name in names:
    for r in rows:
      assert math.isfinite(r[f"loss_{name}"]) and math.isfinite(r[f"bpb_{name}"])
    assert sum(r[f"tokens_{name}"] for r in rows) > 0
    assert math.isfinite(rows[-1][f"eval_bpb_{name}"])
    assert math.isfinite(summary[f"eval_bpb_{name}"])
  for name in ("caption", "translate", "copy"):   # the tasks with an input
    assert f"heldout_bleu_{name}" in summary
    assert (tmp_path / "tasks" / name / "outputs" / "step_2.jsonl").exists()
  assert "heldout_bleu_lm" not in summary
