"""The multi-granularity model: causality for every preset, segmenter, pooling and
span; the one-level model is the flat LM; presets learn; no recompilation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm.data import pipeline
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, shift_right
from mgm.nn.layers import Embed, Linear, RMSNorm
from mgm.nn.transformer import Stack
from mgm.train import make_optimizer, make_train_step

from jitted import init_params, init_state

ALPHABET = np.frombuffer(b"abcdefgh  .,!?\n", np.uint8)


def text_like(rng, shape):
  """Random bytes dense in delimiters, so units close at different places per row."""
  return ALPHABET[rng.integers(0, len(ALPHABET), size=shape)].astype(np.int32)


def levels_config(*levels):
  return [mlc.ConfigDict(l) for l in levels]


def two_level(units, pool, span="parent", upsample="repeat", **token):
  coarse = dict(width=32, depth=1, heads=2, units=units, pool=pool, max_len=0, max_units=48,
                upsample=upsample)
  if not units.startswith("fixed"):
    coarse["max_len"] = 6
  return levels_config(coarse, dict(width=32, depth=1, heads=2, span=span, **token))


# Every segmenter and every pooling type (each segmenter meets two poolings
# across the cases), every span, pre-layers, auxiliary losses, 2 and 3 levels.
CASES = {
    "fixed-mean": two_level("fixed:4", "mean"),
    "fixed-last": two_level("fixed:4", "last"),
    "fixed-concat-prelayers": two_level("fixed:4", "concat", pre_layers=1),
    "fixed-attention-fullspan": two_level("fixed:4", "attention", span="full"),
    "word-attention": two_level("word", "attention"),
    "word-last-window-prelayers": two_level("word", "last", span="window:5", pre_layers=1),
    "sentence-last": two_level("sentence", "last"),
    "sentence-mean": two_level("sentence", "mean", span="full"),
    "paragraph-attention": two_level("paragraph", "attention"),
    "paragraph-mean": two_level("paragraph", "mean", span="window:7"),
    "bytes-mean": two_level("bytes:,;", "mean"),
    "bytes-attention": two_level("bytes:,;", "attention", pre_layers=1),
    "3-level-fixed-concat": levels_config(
        dict(width=32, depth=1, heads=2, units="fixed:16", pool="concat"),
        dict(width=32, depth=1, heads=2, units="fixed:4", pool="concat", span="parent",
             pre_layers=1),
        dict(width=32, depth=1, heads=2, span="parent")),
    "3-level-fixed-linear-upsampling": levels_config(
        dict(width=32, depth=1, heads=2, units="fixed:16", pool="mean", upsample="linear"),
        dict(width=16, depth=1, heads=2, units="fixed:4", pool="attention", span="parent",
             upsample="linear"),
        dict(width=24, depth=1, heads=2, span="parent")),
    "word-attention-upsampling": two_level("word", "mean", upsample="attention"),
    "3-level-fixed-attention-linear-upsampling": levels_config(
        dict(width=32, depth=1, heads=2, units="fixed:16", pool="mean",
             upsample="attention:linear"),
        dict(width=16, depth=1, heads=2, units="fixed:4", pool="mean", span="parent",
             upsample="attention"),
        dict(width=24, depth=1, heads=2, span="parent")),
    "3-level-sentence-over-fixed": levels_config(
        dict(width=32, depth=1, heads=2, units="sentence", pool="mean", max_len=12,
             max_units=48, aux_loss="first", aux_weight=0.5),
        dict(width=16, depth=1, heads=2, units="fixed:4", pool="attention", max_units=48,
             span="parent", aux_loss="bag", aux_weight=0.5),
        dict(width=24, depth=1, heads=2, span="parent", pre_layers=1)),
}


def build(levels, seq_len):
  config = lm_configs.get_config("tiny")
  config.model.levels = levels
  config.data.seq_len = seq_len
  spec = spec_lib.from_config(config.model)
  spec_lib.check_hierarchy(spec.levels, seq_len)
  return LM(spec)


def assert_causal(model, seq_len, rows=2, seed=0):
  """For every position j: changing tokens >= j leaves logits <= j unchanged.

  logits[t] predicts token t from tokens < t. All perturbations run as one batch.
  """
  rng = np.random.default_rng(seed)
  base = text_like(rng, (rows, seq_len))
  variants = np.repeat(base[None], seq_len, axis=0)                # [T, rows, T]
  for j in range(seq_len):
    variants[j, :, j:] = text_like(rng, (rows, seq_len - j))
    variants[j, :, j] = np.where(variants[j, :, j] == base[:, j],   # really change token j
                                 ord("x"), variants[j, :, j])
  params = init_params(model, jax.random.key(seed), base.shape)
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  # the base rows and every variant as one batch: one compile
  both = np.asarray(apply(np.concatenate([base, variants.reshape(-1, seq_len)])))
  ref, out = both[:rows], both[rows:].reshape(seq_len, rows, seq_len, -1)
  for j in range(seq_len):
    np.testing.assert_allclose(out[j, :, :j + 1], ref[:, :j + 1], atol=2e-5, rtol=1e-4,
                               err_msg=f"a change at position {j} leaked backwards")
    if j + 1 < seq_len:   # ...and it is seen right after, so the test can fail
      assert not np.allclose(out[j, :, j + 1], ref[:, j + 1], atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_causal_for_every_segmenter_pooling_and_span(case):
  assert_causal(build(CASES[case], 48), 48)


@pytest.mark.parametrize("model", lm_configs.MODELS)
def test_causal_for_every_preset(model):
  config = lm_configs.get_config(f"model={model},size=tiny")
  spec = spec_lib.from_config(config.model)
  assert_causal(LM(spec), config.data.seq_len, rows=2, seed=1)


class ReferenceFlatLM(nn.Module):
  """The skeleton's decoder-only LM written out directly: embed(shift(x)) -> stack -> logits."""
  spec: object   # a one-level ModelSpec

  @property
  def width(self):
    return self.spec.levels[0].width

  @property
  def vocab(self):
    return self.spec.vocab_size

  @nn.compact
  def __call__(self, tokens):
    from mgm.data.tokenizer import BOS
    x = Embed(self.vocab, self.width, name="embed")(shift_right(tokens, BOS))
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    level = self.spec.levels[0]
    x = Stack(self.spec, level, level.depth, level.span_kind, name="level_0")(x, pos)
    x = RMSNorm(name="final_norm")(x)
    return Linear((self.width, self.vocab), ("embed", "vocab"),
                  name="unembed")(x)


def test_one_level_model_is_the_flat_lm():
  config = lm_configs.get_config("model=flat,size=tiny")
  model = LM(spec_lib.from_config(config.model))
  level = config.model.levels[0]
  tokens = text_like(np.random.default_rng(0), (2, 32))
  params = init_params(model, jax.random.key(0), tokens.shape)
  reference = ReferenceFlatLM(model.spec)
  apply = lambda module: jax.jit(lambda t: module.apply({"params": params}, t))(tokens)
  np.testing.assert_array_equal(apply(model), apply(reference))


@pytest.mark.parametrize("model", lm_configs.MODELS)
def test_every_preset_learns_the_synthetic_corpus(model):
  config = lm_configs.get_config(f"model={model},size=tiny")
  lm = LM(spec_lib.from_config(config.model))
  tx, _ = make_optimizer(config.train)
  data = iter(pipeline.make_dataset(config.data, "train", batch_size=8, seed=0))
  state = init_state(lm, tx, jax.random.key(0), (8, config.data.seq_len))
  step = jax.jit(make_train_step(lm, tx))
  losses = []
  for _ in range(25):
    state, metrics = step(state, next(data))
    losses.append(float(metrics["loss"]))
    assert np.isfinite(float(metrics["grad_norm"])) and int(metrics["unit_overflow"]) == 0
  assert np.mean(losses[-3:]) < 0.65 * losses[0], losses   # from ~6.2 nats to < 4.0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_new_boundary_positions_do_not_recompile():
  lm = build(CASES["3-level-sentence-over-fixed"], 48)
  config = lm_configs.get_config("tiny")
  tx, _ = make_optimizer(config.train)
  traces = []
  step_fn = make_train_step(lm, tx)

  def counted(state, batch):
    traces.append(1)
    return step_fn(state, batch)

  step = jax.jit(counted)
  state = init_state(lm, tx, jax.random.key(0), (2, 48))
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {"tokens": text_like(rng, (2, 48)), "mask": np.ones((2, 48), np.float32)}
    state, _ = step(state, batch)
  assert len(traces) == 1


@pytest.mark.parametrize("levels,seq_len,field", [
    (two_level("word", "concat"), 48, r"model\.levels\[0\]\.pool"),
    (two_level("word", "mean", upsample="linear"), 48, r"model\.levels\[0\]\.upsample"),
    (two_level("word", "mean", upsample="attention:linear"), 48,
     r"model\.levels\[0\]\.upsample"),
    (two_level("fixed:5", "mean"), 48, r"data\.seq_len"),
    (levels_config(dict(width=30, depth=1, heads=4)), 48, r"model\.levels\[0\]\.heads"),
    (levels_config(dict(width=32, depth=1, heads=2, units="word", pool="mean"),
                   dict(width=32, depth=1, heads=2)), 48, r"model\.levels\[0\]\.max_units"),
    (levels_config(dict(width=32, depth=1, heads=2, units="fixed:4", pool="mean",
                        pre_layers=1), dict(width=32, depth=1, heads=2)), 48,
     r"model\.levels\[0\]\.pre_layers"),
    (levels_config(dict(width=32, depth=1, heads=2, units="lines", pool="mean"),
                   dict(width=32, depth=1, heads=2)), 48, r"model\.levels\[0\]\.units"),
    (levels_config(dict(width=32, depth=1, heads=2, units="fixed:4", pool="mean"),
                   dict(width=32, depth=1, heads=2, units="word")), 48,
     r"model\.levels\[1\]\.units"),
    ([], 48, r"model\.levels"),
])
def test_bad_hierarchies_name_the_field(levels, seq_len, field):
  with pytest.raises(ConfigError, match=field):
    build(levels, seq_len)


def test_fixed_patches_attend_as_the_unit_masked_parent_span(monkeypatch):
  """A token level attending within fixed parent patches (here P = 4 under 16)
  runs on the sequence reshaped to [B * T/P, P] (the fast path; MEGABYTE's). The
  general path (dense attention masked to the token's parent unit, over the whole
  sequence) gives the same logits and gradients with the same parameters.
  Measured: logits (scale ~4) <= 7.2e-7 apart, gradients <= 6.5e-7 of each
  leaf's largest."""
  model = build(CASES["3-level-fixed-concat"], 48)
  tokens = text_like(np.random.default_rng(0), (2, 48))
  params = init_params(model, jax.random.key(0), tokens.shape)
  cotangent = jax.random.normal(jax.random.key(1), (2, 48, model.spec.vocab_size))

  def logits_and_grads():   # a new function each call: jax.jit caches by function
    def run(params):
      logits, pullback = jax.vjp(lambda p: model.apply({"params": p}, tokens), params)
      return logits, pullback(cotangent)[0]
    return jax.jit(run)(params)

  fast = logits_and_grads()
  monkeypatch.setattr(LM, "_patched", lambda self, i: False)
  general = logits_and_grads()
  np.testing.assert_allclose(fast[0], general[0], atol=2e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(general[1])):
    np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.abs(b).max()), rtol=0)
