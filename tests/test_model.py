"""The model: causality, shapes, presets, and that training lowers the loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import make_optimizer, make_train_step

from jitted import init_params, init_state


def tiny_model(**overrides):
  config = lm_configs.get_config("tiny")
  config.model.update(overrides)
  return LM(spec_lib.from_config(config.model)), config


@pytest.mark.parametrize("span", ["full", "window:3"])
def test_logits_at_every_position_ignore_later_tokens(span):
  model, config = tiny_model()
  config.model.levels[0].span = span
  model = LM(spec_lib.from_config(config.model))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, size=(3, 12)).astype(np.int32)
  params = init_params(model, jax.random.key(0), tokens.shape)
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  base = np.asarray(apply(tokens))
  # logits[t] is the prediction of token t: it may depend on tokens < t only
  for j in range(tokens.shape[1] - 1):
    changed = tokens.copy()
    changed[:, j:] = (changed[:, j:] + rng.integers(1, 256, size=changed[:, j:].shape)) % 256
    out = np.asarray(apply(changed))
    np.testing.assert_allclose(out[:, :j + 1], base[:, :j + 1], atol=1e-5, rtol=1e-5)
    # and the change is visible right after (so the test can fail)
    assert not np.allclose(out[:, j + 1], base[:, j + 1])


def test_window_span_limits_what_a_position_sees():
  model, config = tiny_model()
  config.model.levels[0].span = "window:3"
  config.model.levels[0].depth = 1
  model = LM(spec_lib.from_config(config.model))
  tokens = np.random.default_rng(1).integers(0, 256, size=(2, 10)).astype(np.int32)
  params = init_params(model, jax.random.key(0), tokens.shape)
  changed = tokens.copy()
  changed[:, 0] = (changed[:, 0] + 1) % 256
  # both batches as one, jitted (op by op, the forward pass compiles each op)
  both = jax.jit(lambda t: model.apply({"params": params}, t))(np.concatenate([tokens, changed]))
  base, out = both[:2], both[2:]
  # one layer, window 3: the prediction of token t sees tokens t-3..t-1 only
  np.testing.assert_allclose(out[:, 4:], base[:, 4:], atol=1e-6)
  assert not np.allclose(out[:, 3], base[:, 3])


def test_tiny_training_lowers_the_loss():
  model, config = tiny_model()
  tx, _ = make_optimizer(config.train)
  # a learnable pattern: repeated random 8-byte phrases
  rng = np.random.default_rng(0)
  phrases = rng.integers(0, 256, size=(4, 8))
  tokens = np.stack([np.concatenate([phrases[j] for j in rng.integers(0, 4, size=8)])
                     for _ in range(8)]).astype(np.int32)
  batch = {"tokens": jnp.asarray(tokens), "mask": jnp.ones(tokens.shape, jnp.float32)}
  state = init_state(model, tx, jax.random.key(0), tokens.shape)
  step = jax.jit(make_train_step(model, tx))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("size", lm_configs.SIZES)
def test_every_preset_builds(size):
  config = lm_configs.get_config(size)
  model = LM(spec_lib.from_config(config.model))
  shape = (2, min(config.data.seq_len, 128))
  tx, _ = make_optimizer(config.train)
  if size == "base":   # shapes only: ~100M parameters at sequence 8192
    shape = (config.train.batch_size, config.data.seq_len)
    state = jax.eval_shape(lambda: init_state(model, tx, jax.random.key(0), shape))
    n = sum(x.size for x in jax.tree.leaves(state.params))
    assert 90e6 < n < 110e6, n
    out = jax.eval_shape(make_train_step(model, tx), state,
                         {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
                          "mask": jax.ShapeDtypeStruct(shape, jnp.float32)})
    assert out[1]["loss"].shape == ()
    return
  # initialisation and the first train step as one program (one compile)
  first_step = jax.jit(lambda rng, batch: make_train_step(model, tx)(
      init_state(model, tx, rng, shape), batch))
  tokens = jnp.zeros(shape, jnp.int32)
  state, metrics = first_step(jax.random.key(0),
                              {"tokens": tokens, "mask": jnp.ones(shape, jnp.float32)})
  assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("field,value,message", [
    ("levels", [], "model.levels"),
    ("mlp_ratio", 0, "model.mlp_ratio"),
    ("dtype", "float8", "model.dtype"),
])
def test_bad_model_config_names_the_field(field, value, message):
  config = lm_configs.get_config("tiny")
  config.model[field] = value
  with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
    spec_lib.from_config(config.model)


@pytest.mark.parametrize("field,value", [("width", 0), ("heads", 3), ("span", "nearby")])
def test_bad_level_config_names_the_field(field, value):
  config = lm_configs.get_config("tiny")
  config.model.levels[0][field] = value
  with pytest.raises(ConfigError, match=rf"model\.levels\[0\]\.{field}"):
    spec_lib.from_config(config.model)
