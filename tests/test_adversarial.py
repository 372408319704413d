"""The adversarial auxiliary loss (mgm/adversarial.py): each player's gradient
comes from its own loss only, one train step is the two AdamW updates of those
gradients, the noise is keyed by the step, and a run logs both losses.
(Resume after kill -9: tests/test_resume.py, slow.)"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm as lm_configs
from mgm import adversarial as adv_lib
from mgm import loop, train
from mgm.data import pipeline
from mgm.model import spec as spec_lib
from mgm.model.lm import LM

BATCH = 4


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def setup(request):
  config = lm_configs.get_config("tiny")
  config.adversarial.update(weight=0.3, discriminator=request.param, width=32, depth=1)
  spec = adv_lib.from_config(config)
  model = LM(spec_lib.from_config(config.model))
  tx, _ = train.make_optimizer(config.train)
  shape = (BATCH, config.data.seq_len)
  state = jax.jit(lambda r: train.init_state(model, tx, r, shape, spec))(jax.random.key(0))
  batch = next(iter(pipeline.make_dataset(config.data, "train", batch_size=BATCH, seed=0)))
  batch = jax.tree.map(jnp.asarray, batch)
  batch["mask"] = batch["mask"].at[:, :5].set(0.0)   # some positions outside the loss
  return model, tx, spec, state, batch


def separate_gradients(model, spec, state, batch, key):
  """Each player's gradient computed on its own: the model's of L + w L_adv with
  the discriminator fixed, the discriminator's of L_D with the logits fixed."""
  disc = state.adversarial["params"]

  def generator(params):
    total, _ = train.loss_fn(params, model, batch)
    logits = model.apply({"params": params}, batch["tokens"])
    adv, _, _ = adv_lib.losses(spec, disc, logits, batch["tokens"], batch["mask"], key)
    return total + spec.weight * adv

  logits = model.apply({"params": state.params}, batch["tokens"])
  discriminator = lambda d: adv_lib.losses(spec, d, logits, batch["tokens"], batch["mask"], key)[1]
  return jax.grad(generator)(state.params), jax.grad(discriminator)(disc)


def test_each_player_gets_the_gradient_of_its_own_loss_only(setup):
  model, _, spec, state, batch = setup
  key = jax.random.key(7)
  _, metrics, (grads, disc_grads) = jax.jit(lambda s, b: train.accumulated_grads(
      s.params, model, b, 1, 0.0, (spec, s.adversarial["params"], key)))(state, batch)
  want, want_disc = jax.jit(lambda s, b: separate_gradients(model, spec, s, b, key))(state, batch)
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
  jax.tree.map(close, grads, want)
  jax.tree.map(close, disc_grads, want_disc)
  assert 0.0 <= float(metrics["adv_accuracy"]) <= 1.0
  assert float(optax.tree.norm(disc_grads)) > 0 and metrics["adv_generator"] > 0


def test_the_fake_rows_differ_from_the_real_ones_only_at_loss_positions(setup):
  model, _, spec, state, batch = setup
  logits = model.apply({"params": state.params}, batch["tokens"])
  seen = []
  real_disc = adv_lib.Discriminator.__call__

  def spy(self, rows, real):
    seen.append(rows)
    return real_disc(self, rows, real)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(adv_lib.Discriminator, "__call__", spy)
    adv_lib.losses(spec, state.adversarial["params"], logits, batch["tokens"], batch["mask"],
                   jax.random.key(1))
  fake, real = np.asarray(seen[0]), np.asarray(seen[1])
  outside = np.asarray(batch["mask"]) == 0
  np.testing.assert_array_equal(fake[outside], real[outside])
  assert not np.allclose(fake[~outside], real[~outside])
  np.testing.assert_allclose(fake.sum(-1), 1.0, atol=1e-5)   # distributions over bytes


def test_a_train_step_is_both_adamw_updates_with_noise_keyed_by_the_step(setup):
  model, tx, spec, state, batch = setup
  step = jax.jit(train.make_train_step(model, tx, adversarial=spec, seed=3))
  new, metrics = step(state, batch)
  key = jax.random.fold_in(jax.random.key(3), state.step)
  grads, disc_grads = separate_gradients(model, spec, state, batch, key)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  disc_tx = adv_lib.make_optimizer(spec)
  disc = state.adversarial
  disc_updates, _ = disc_tx.update(disc_grads, disc["opt_state"], disc["params"])
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)
  jax.tree.map(close, new.params, optax.apply_updates(state.params, updates))
  jax.tree.map(close, new.adversarial["params"], optax.apply_updates(disc["params"], disc_updates))
  again, _ = step(state, batch)                  # same step, same noise
  jax.tree.map(np.testing.assert_array_equal, again.adversarial, new.adversarial)
  later, _ = step(state.replace(step=state.step + 1), batch)   # another step, other noise
  assert not np.allclose(jax.tree.leaves(later.adversarial["params"])[0],
                         jax.tree.leaves(new.adversarial["params"])[0])


def test_a_run_logs_both_losses_and_refuses_to_resume_with_the_discriminator_changed(tmp_path):
  config = lm_configs.get_config("tiny")
  config.train.update(steps=2, log_every=1, eval_every=2, warmup_steps=1)
  config.adversarial.weight = 0.1
  loop.run_mode(config, str(tmp_path), "train")
  row = [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
  assert '"adv_discriminator"' in row and '"adv_generator"' in row
  before = sorted(p.name for p in tmp_path.iterdir())
  config.adversarial.width = 48
  config.train.steps = 4
  with pytest.raises(Exception, match="adversarial.width"):
    loop.run_mode(config, str(tmp_path), "train")
  assert sorted(p.name for p in tmp_path.iterdir()) == before
