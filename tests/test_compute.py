"""How a step is computed (attention kernel, remat, gradient accumulation) never
changes what it computes.

The cuDNN comparison needs an NVIDIA GPU; it is skipped elsewhere (run it with
`JAX_PLATFORMS=cuda python -m pytest tests/test_compute.py` on one).
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm as lm_configs
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.nn.attention import fused_impl
from mgm.data import pipeline
from mgm.data.tokenizer import EOS
from mgm.train import accumulated_grads, loss_fn, make_optimizer, make_train_step
from mgm.workdir import check_and_save_config

from jitted import init_params, init_state

ON_GPU = jax.default_backend() == "gpu"


def test_auto_picks_cudnn_only_on_gpu_in_half_precision():
  on_cpu = jax.default_backend() == "cpu"
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    expected = "cudnn" if ON_GPU and dtype != jnp.float32 else "blockwise" if on_cpu else "xla"
    assert fused_impl("auto", dtype) == expected
  assert fused_impl("xla", jnp.bfloat16) == "xla"


def test_cudnn_is_refused_off_gpu_or_in_float32():
  config = lm_configs.get_config("tiny")
  config.model.attention_impl = "cudnn"
  with pytest.raises(ConfigError, match="bfloat16" if ON_GPU else "NVIDIA GPU"):
    spec_lib.from_config(config.model)


def test_a_run_can_resume_with_another_kernel_or_remat_but_not_another_shape(tmp_path):
  config = lm_configs.get_config("tiny")
  check_and_save_config(str(tmp_path), config)
  config.model.update(attention_impl="xla", remat=True)
  check_and_save_config(str(tmp_path), config)          # accepted
  config.model.levels[0].width = 32
  with pytest.raises(Exception, match=r"model\.levels\[0\]\.width"):
    check_and_save_config(str(tmp_path), config)


def loss_and_grads(config, tokens):
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(0), tokens.shape)
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, np.float32),
           "segment_ids": np.ones_like(tokens)}
  return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, model, batch)[0]))(params)


def test_remat_policies_give_the_same_loss_and_gradients():
  """Every level's generator is the same Stack, so the flat model covers them."""
  config = lm_configs.get_config("tiny")
  tokens = np.random.default_rng(0).integers(0, 256, size=(2, 64)).astype(np.int32)
  reference = loss_and_grads(config, tokens)
  for policy in ("full", "save_dots"):
    config.model.update(remat=True, remat_policy=policy)
    loss, grads = loss_and_grads(config, tokens)
    np.testing.assert_allclose(loss, reference[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(reference[1]), jax.tree.leaves(grads)):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def unequal_batches(config, n):
  """n training batches of 8 rows; the first has 3 rows cut to 40 of 64 tokens, so
  its micro-batches hold unequal token counts (4 micro-batches: 104, 104, 104, 128)."""
  data = pipeline.make_dataset(config.data, "train", batch_size=8, seed=0)
  batches = [b for _, b in zip(range(n), data)]
  batches[0]["mask"][:3, 40:] = 0
  return batches


def relative_error(tree, reference):
  """||tree - reference|| / ||reference||, over all leaves together."""
  norm = lambda t: float(optax.tree.norm(t))
  return norm(jax.tree.map(jnp.subtract, tree, reference)) / norm(reference)


# Measured (accum 4 against one pass, float32): the gradients differ by 2.2e-7
# (flat) and 3.4e-7 (megabyte) of their norm, rounding; mgm3's by 4.9e-4, as its
# auxiliary loss is a mean over each micro-batch's units weighted by token share,
# not a mean over the batch's units (its value: 6.8517 against 6.8522). Weighting
# the micro-batches equally instead of by tokens moves them by 3.0e-2 (flat) and
# 3.6e-2 (mgm3).
@pytest.mark.parametrize("model,tol", [("flat", 1e-5), ("megabyte", 1e-5), ("mgm3", 3e-3)])
def test_accumulated_gradients_equal_one_pass_over_the_batch(model, tol):
  """Loss, metrics and gradients of 4 micro-batches of unequal token counts
  equal one pass's: exactly (to rounding) for the token loss, within `tol` where
  an auxiliary loss enters."""
  config = lm_configs.get_config(f"model={model},size=tiny")
  batch = unequal_batches(config, 1)[0]
  lm = LM(spec_lib.from_config(config.model))
  params = nn.meta.unbox(init_params(lm, jax.random.key(0), batch["tokens"].shape))
  run = jax.jit(lambda accum: accumulated_grads(params, lm, batch, accum), static_argnums=0)
  (total, metrics, grads), (total_4, metrics_4, grads_4) = run(1), run(4)
  assert metrics_4.keys() == metrics.keys()
  assert float(metrics_4["tokens"]) == float(metrics["tokens"]) == 440
  np.testing.assert_allclose(metrics_4["loss"], metrics["loss"], rtol=1e-6)
  for name in metrics:
    np.testing.assert_allclose(metrics_4[name], metrics[name], rtol=tol, err_msg=name)
  np.testing.assert_allclose(total_4, total, rtol=tol)
  assert relative_error(grads_4, grads) < tol


def train_steps(config, batches, grad_accum):
  """Parameter updates (final - initial) and per-step gradient norms after one
  step per batch with the run's optimizer."""
  model = LM(spec_lib.from_config(config.model))
  tx, _ = make_optimizer(config.train)
  state = init_state(model, tx, jax.random.key(0), batches[0]["tokens"].shape)
  initial = state.params
  step = jax.jit(make_train_step(model, tx, grad_accum))
  norms = []
  for batch in batches:
    state, metrics = step(state, batch)
    norms.append(float(metrics["grad_norm"]))
  return jax.tree.map(jnp.subtract, state.params, initial), norms


def test_gradient_accumulation_trains_like_one_pass():
  """The train step applies the accumulated gradient: three steps (the first at
  learning rate 0, warm-up starts there) move every parameter as one pass does.
  Measured: updates up to 2.3e-3 and differing by <= 1.2e-7 (one float32 ulp of
  the parameters); the tolerance is 1e-3 of the largest update. (Not mgm3: after
  Adam's first steps, ~sign(gradient), its 5e-4 gradient difference flips
  near-zero elements, up to 30% of a leaf's largest update.)"""
  config = lm_configs.get_config("model=flat,size=tiny")
  batches = unequal_batches(config, 3)
  updates, norms = train_steps(config, batches, 1)
  updates_4, norms_4 = train_steps(config, batches, 4)
  np.testing.assert_allclose(norms_4, norms, rtol=1e-5)
  largest = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates))
  assert largest > 1e-3                 # the steps did move the parameters
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_4)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * largest)


def test_a_run_saved_before_a_model_field_existed_resumes_with_its_default(tmp_path):
  config = lm_configs.get_config("model=megabyte,size=tiny")
  check_and_save_config(str(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["model"]["levels"][0]["upsample"], saved["model"]["attention_impl"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_and_save_config(str(tmp_path), config)          # the defaults: accepted
  config.model.levels[0].upsample = "linear"
  with pytest.raises(Exception, match=r"model\.levels\[0\]\.upsample"):
    check_and_save_config(str(tmp_path), config)


@pytest.mark.skipif(not ON_GPU, reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("model", ["flat", "hourglass"])
def test_cudnn_attention_matches_xla_in_loss_and_gradients(model):
  config = lm_configs.get_config(f"model={model},size=tiny")
  config.data.seq_len = 256
  config.model.dtype = "bfloat16"
  for level in config.model.levels:
    level.update(width=128, heads=2)          # head dim 64, as in the presets
  tokens = np.random.default_rng(0).integers(0, 256, size=(4, 256)).astype(np.int32)
  tokens[:, 37::50] = EOS     # packed documents: with them cuDNN's path runs Pallas's kernel
  results = []
  for impl in ("xla", "cudnn"):
    config.model.attention_impl = impl
    results.append(loss_and_grads(config, tokens))
  (loss_xla, grads_xla), (loss_cudnn, grads_cudnn) = results
  np.testing.assert_allclose(loss_cudnn, loss_xla, rtol=1e-2)
  for a, b in zip(jax.tree.leaves(grads_xla), jax.tree.leaves(grads_cudnn)):
    scale = float(jnp.abs(a).max()) + 1e-6
    assert float(jnp.abs(a - b).max()) / scale < 5e-2
