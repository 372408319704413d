"""The fast paths of a train step compute what the plain ones compute (issue 16):
the chunked cross-entropy (`model.loss_chunk`, mgm/model/loss.py) equals the
full one in value and gradient, label-masked tokens and ragged chunks included;
and one train step with `loss_chunk` or with blockwise attention
(`attention_impl='blockwise'`) equals the plain step (XLA's dense attention,
full logits) to float32 rounding: its loss and every gradient (tiny preset,
two rows of packed documents, label-masked tokens, label smoothing)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm as lm_configs
from mgm.data import pipeline
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, token_loss
from mgm.model.loss import chunked_token_ce, masked_mean
from mgm.nn import attention
from mgm.train import accumulated_grads, make_optimizer, smoothed_token_loss

from jitted import init_state

B, T, D, V = 2, 21, 16, 40


def inputs(seed=0):
  """h [B, T, D], kernel [D, V], tokens [B, T], mask [B, T] with label-masked tokens."""
  kh, kw, kt = jax.random.split(jax.random.key(seed), 3)
  h = jax.random.normal(kh, (B, T, D))
  kernel = jax.random.normal(kw, (D, V)) / np.sqrt(D)
  tokens = jax.random.randint(kt, (B, T), 0, V)
  mask = jnp.ones((B, T)).at[0, :7].set(0.0).at[1, T - 3:].set(0.0)   # prompt, padding
  return h, kernel, tokens, mask


def full_loss(h, kernel, tokens, mask, smoothing):
  """The plain path: all logits at once, train.py's token losses."""
  logits = (h @ kernel).astype(jnp.float32)
  if smoothing:
    return smoothed_token_loss(logits, tokens, mask, smoothing)
  return token_loss(logits, tokens, mask)[0]


def chunked_loss(h, kernel, tokens, mask, smoothing, chunk):
  ce, uniform = chunked_token_ce(h, kernel, tokens, chunk)
  return masked_mean((1 - smoothing) * ce + smoothing * uniform, mask)[0]


@pytest.mark.parametrize("chunk", [7, 8, 32])   # divides T; ragged last chunk; one chunk > T
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_equals_full_in_value_and_gradient(chunk, smoothing):
  h, kernel, tokens, mask = inputs()
  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)), static_argnums=(4,))
  full, (dh_full, dw_full) = grad(full_loss)(h, kernel, tokens, mask, smoothing)
  fast = jax.tree_util.Partial(chunked_loss, chunk=chunk)
  chunked, (dh, dw) = grad(fast)(h, kernel, tokens, mask, smoothing)
  np.testing.assert_allclose(chunked, full, rtol=1e-6)
  np.testing.assert_allclose(dh, dh_full, atol=1e-6, rtol=0)
  np.testing.assert_allclose(dw, dw_full, atol=1e-6, rtol=0)
  # label-masked positions get no gradient, and a masked token does not count
  assert not np.asarray(dh)[0, :7].any() and not np.asarray(dh)[1, T - 3:].any()


def test_per_token_cross_entropy_is_each_positions_own():
  """Each position's ce is its own logits' (a shuffled chunk would not show in a mean)."""
  h, kernel, tokens, _ = inputs(1)
  ce, _ = chunked_token_ce(h, kernel, tokens, 8)
  expected = optax.softmax_cross_entropy_with_integer_labels(h @ kernel, tokens)
  np.testing.assert_allclose(ce, expected, atol=1e-5, rtol=0)


# -- one train step with each switch against the plain step ------------------------

PLAIN = {"attention_impl": "xla", "loss_chunk": 0}


@pytest.fixture(scope="module")
def tiny():
  """The tiny preset with two documents a row (document mask), 2 rows, its
  optimizer, an initial state and one batch."""
  config = lm_configs.get_config("tiny")
  config.train.batch_size = 2
  spec = spec_lib.from_config(config.model)
  tx, _ = make_optimizer(config.train)
  state = init_state(LM(spec, config.data.packing), tx, jax.random.key(0),
                     (2, config.data.seq_len))
  batch = next(iter(pipeline.make_dataset(config.data, "train", batch_size=2, seed=0)))
  batch = {**batch, "mask": jnp.asarray(batch["mask"]).at[:, :5].set(0.0)}
  return config, spec, tx, state, batch


def one_step(tiny, **switches):
  """(loss, metrics, gradients) of the train step's batch (what the update reads)."""
  config, spec, _, state, batch = tiny
  model = LM(dataclasses.replace(spec, **{**PLAIN, **switches}), config.data.packing)
  grads = jax.jit(accumulated_grads, static_argnums=(1, 3, 4))
  return grads(state.params, model, batch, 1, 0.1)   # with label smoothing


@pytest.fixture(scope="module")
def plain_step(tiny):
  """The plain step's (loss, metrics, gradients): XLA's dense attention, full logits."""
  return one_step(tiny)


@pytest.mark.parametrize("switches", [{"loss_chunk": 24}, {"attention_impl": "blockwise"}],
                         ids=["loss_chunk", "blockwise"])
def test_train_step_with_a_fast_path_equals_the_plain_step(tiny, plain_step, switches,
                                                           monkeypatch):
  monkeypatch.setattr(attention, "BLOCK", 24)   # 64 bytes: blocks of 24, 24, 16
  plain_total, plain_metrics, plain_grads = plain_step
  total, metrics, grads = one_step(tiny, **switches)
  np.testing.assert_allclose(total, plain_total, rtol=1e-6)
  for key in ("loss", "tokens"):
    np.testing.assert_allclose(metrics[key], plain_metrics[key], rtol=1e-6, err_msg=key)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0),
               grads, plain_grads)
