"""model.scan_layers: each decoder stack's blocks as one nn.scan. The scanned
model is the unrolled one with its parameters stacked: equal logits and
gradients (with and without remat), the cached decoder equal to the
teacher-forced pass (self- and cross-attention caches sown inside the scan),
and checkpoint.init_from reads either layout into either."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import caption as caption_configs
from configs import lm as lm_configs
from jitted import init_params as boxed_init_params
from mgm import checkpoint, decode, train
from mgm.model import scan_layout
from mgm.model import spec as spec_lib
from mgm.model.lm import LM, example_cond
from test_sharding import batches, tiny_config  # noqa: F401 (a fixture)
from test_sharding import train as train_on_mesh

BATCH = 2
PRESETS = ("flat", "mgm3")   # a flat stack; three stacks over delimiter units


def init_params(model, key, shape):
  """Plain (unboxed) parameters, the layout scan_layout converts."""
  return nn.meta.unbox(boxed_init_params(model, key, shape))


def models(config, **spec_changes):
  """(unrolled LM, scanned LM) of one config."""
  spec = dataclasses.replace(spec_lib.from_config(config.model), **spec_changes)
  return LM(spec), LM(dataclasses.replace(spec, scan_layers=True))


def tokens(seq_len, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (BATCH, seq_len)), jnp.int32)


@pytest.fixture(scope="module", params=PRESETS)
def pair(request):
  """(unrolled, scanned, unrolled params, the same params scanned, seq_len)."""
  config = lm_configs.get_config(f"model={request.param},size=tiny")
  unrolled, scanned = models(config)
  params = init_params(unrolled, jax.random.key(0), (BATCH, config.data.seq_len))
  return unrolled, scanned, params, scan_layout.to_layout(params, "scanned"), config.data.seq_len


def test_the_scanned_tree_is_the_unrolled_one_stacked_and_converts_back_exactly(pair):
  unrolled, scanned, params, stacked, seq_len = pair
  assert scan_layout.layout(params) == "unrolled" and scan_layout.layout(stacked) == "scanned"
  # what the scanned module initialises has the converted tree's structure and shapes
  fresh = init_params(scanned, jax.random.key(0), (BATCH, seq_len))
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, stacked)
  back = scan_layout.to_layout(stacked, "unrolled")
  jax.tree.map(np.testing.assert_array_equal, back, params)
  level = stacked["level_0"]["blocks"]["block"]
  depth = unrolled.spec.levels[0].depth
  assert all(leaf.shape[0] == depth for leaf in jax.tree.leaves(level))


def loss_and_grads(model, params, toks):
  mask = jnp.ones(toks.shape, jnp.float32)
  batch = {"tokens": toks, "mask": mask}
  grad = jax.jit(jax.value_and_grad(lambda p: train.loss_fn(p, model, batch)[0]))
  return grad(params)


def test_scanned_logits_and_gradients_equal_the_unrolled_ones(pair):
  unrolled, scanned, params, stacked, seq_len = pair
  toks = tokens(seq_len)
  forward = lambda m, p: jax.jit(lambda p: m.apply({"params": p}, toks))(p)
  np.testing.assert_allclose(forward(scanned, stacked), forward(unrolled, params),
                             atol=1e-5, rtol=1e-5)
  loss, grads = loss_and_grads(unrolled, params, toks)
  loss_s, grads_s = loss_and_grads(scanned, stacked, toks)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               scan_layout.to_layout(grads_s, "unrolled"), grads)


def test_remat_inside_the_scan_keeps_the_gradients():
  config = lm_configs.get_config("model=mgm3,size=tiny")
  unrolled, scanned = models(config, remat=True, remat_policy="save_dots")
  params = init_params(unrolled, jax.random.key(1), (BATCH, config.data.seq_len))
  toks = tokens(config.data.seq_len, seed=1)
  _, grads = loss_and_grads(unrolled, params, toks)
  _, grads_s = loss_and_grads(scanned, scan_layout.to_layout(params, "scanned"), toks)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               scan_layout.to_layout(grads_s, "unrolled"), grads)


def test_the_scanned_cached_decoder_equals_its_teacher_forced_logits(pair):
  _, scanned, _, stacked, seq_len = pair
  settings = decode.DecodeSettings(strategy="sample", max_new=12, temperature=1.0,
                                   stop_at_eos=False, forced=tuple(b"ok. Then a"))
  toks, lengths = decode.pack_prompts(["", "Hi there. G"], settings, scanned, seq_len)
  out, trace = decode.generate(scanned, stacked, toks, lengths, jax.random.key(2), settings,
                               record_logits=True)
  reference = np.asarray(jax.jit(lambda p, t: scanned.apply({"params": p}, t))(stacked, out))
  for b, n in enumerate(np.asarray(lengths)):
    np.testing.assert_allclose(np.asarray(trace)[b], reference[b, n:n + settings.max_new],
                               atol=1e-5, rtol=1e-5, err_msg=f"row {b}")


def test_a_scanned_cross_attending_decoder_decodes_like_its_teacher_forced_pass():
  """The memory keys/values each scanned block sows are the ones its step reads."""
  config = caption_configs.get_config("model=mgm3,size=tiny")
  for level in config.model.levels:
    level.cross_attention = True
  unrolled, scanned = models(config)
  params = init_params(unrolled, jax.random.key(4), (BATCH, config.data.seq_len))
  stacked = scan_layout.to_layout(params, "scanned")
  cond = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(4).integers(
      0, 256, a.shape), a.dtype), example_cond(scanned.spec, BATCH))
  settings = decode.DecodeSettings(strategy="greedy", max_new=10, stop_at_eos=False,
                                   forced=tuple(b"ok. Then a"))
  toks, lengths = decode.pack_prompts(["A re", "Th"], settings, scanned, config.data.seq_len)
  out, trace = decode.generate(scanned, stacked, toks, lengths, jax.random.key(5), settings,
                               record_logits=True, cond=cond)
  forward = lambda m, p: np.asarray(jax.jit(lambda p, t: m.apply({"params": p}, t, cond=cond))(
      p, out))
  reference = forward(scanned, stacked)
  np.testing.assert_allclose(reference, forward(unrolled, params), atol=1e-5, rtol=1e-5)
  for b, n in enumerate(np.asarray(lengths)):
    np.testing.assert_allclose(np.asarray(trace)[b], reference[b, n:n + 10], atol=1e-5,
                               rtol=1e-5, err_msg=f"row {b}")


@pytest.mark.parametrize("saved, wanted", [("unrolled", "scanned"), ("scanned", "unrolled")])
def test_init_from_reads_a_checkpoint_of_the_other_layout(saved, wanted, tmp_path):
  config = lm_configs.get_config("model=megabyte,size=tiny")
  unrolled, scanned = models(config)
  by_layout = {"unrolled": unrolled, "scanned": scanned}
  shape = (BATCH, config.data.seq_len)
  state = train.init_state(by_layout[saved], train.make_optimizer(config.train)[0],
                           jax.random.key(6), shape)
  mngr = checkpoint.manager(str(tmp_path), config.checkpoint, enable_async=False)
  checkpoint.save(mngr, 3, state, force=True)
  mngr.wait_until_finished()
  tx = train.make_optimizer(config.train)[0]
  abstract = jax.eval_shape(lambda: train.init_state(by_layout[wanted], tx, jax.random.key(0),
                                                     shape).params)
  params, source = checkpoint.restore_params(str(tmp_path), abstract)
  assert source.endswith("/3")
  assert scan_layout.layout(params) == wanted
  jax.tree.map(np.testing.assert_array_equal, params,
               scan_layout.to_layout(state.params, wanted))


def test_a_scanned_model_on_a_2x2x2_mesh_trains_like_on_one_device(batches):
  """The [depth] axis ('layers') is replicated, the rest sharded as unrolled.
  (Scanned blocks draw their initial parameters from split keys, so a scanned
  run starts from other numbers than an unrolled one: compare scanned to scanned.)"""
  config = tiny_config((2, 2, 2))
  config.model.scan_layers = True
  losses, state, _ = train_on_mesh(config, jax.devices(), batches)
  one = tiny_config()
  one.model.scan_layers = True
  ref_losses, ref_state, _ = train_on_mesh(one, jax.devices()[:1], batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state.params, ref_state.params)
  kernel = state.params["level_0"]["blocks"]["block"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.spec[0] is None and kernel.sharding.spec[2] == "tensor"
