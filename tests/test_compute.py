"""How a step is computed (attention kernel, remat, gradient accumulation) never
changes what it computes.

The cuDNN comparison needs an NVIDIA GPU; it is skipped elsewhere (run it with
`JAX_PLATFORMS=cuda python -m pytest tests/test_compute.py` on one).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.nn.attention import fused_impl
from mgm.data import pipeline
from mgm.train import init_params, init_state, loss_fn, make_optimizer, make_train_step
from mgm.workdir import check_and_save_config

ON_GPU = jax.default_backend() == "gpu"


def test_auto_picks_cudnn_only_on_gpu_in_half_precision():
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    expected = "cudnn" if ON_GPU and dtype != jnp.float32 else "xla"
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


def train_steps(config, batches, grad_accum):
  """Parameters and per-step gradient norms after one step per batch."""
  model = LM(spec_lib.from_config(config.model))
  tx, _ = make_optimizer(config.train)
  state = init_state(model, tx, jax.random.key(0), batches[0]["tokens"].shape)
  step = jax.jit(make_train_step(model, tx, grad_accum))
  norms = []
  for batch in batches:
    state, metrics = step(state, batch)
    norms.append(float(metrics["grad_norm"]))
  return state.params, norms


@pytest.mark.parametrize("model,rtol", [("flat", 1e-5), ("megabyte", 1e-5), ("mgm3", 1e-3)])
def test_gradient_accumulation_equals_one_pass_over_the_batch(model, rtol):
  """Exact for the token loss, whatever the micro-batches' token counts; mgm3's
  auxiliary loss (a mean over units) is weighted by token share, so only close."""
  config = lm_configs.get_config(f"model={model},size=tiny")
  data = pipeline.make_dataset(config.data, "train", batch_size=8, seed=0)
  batches = [b for _, b in zip(range(3), data)]
  batches[0]["mask"][:3, 40:] = 0                     # micro-batches of unequal tokens
  params, norms = train_steps(config, batches, 1)
  for accum in (2, 4):
    params_accum, norms_accum = train_steps(config, batches, accum)
    np.testing.assert_allclose(norms_accum, norms, rtol=rtol)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_accum)):
      np.testing.assert_allclose(b, a, rtol=10 * rtol, atol=10 * rtol)


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
  results = []
  for impl in ("xla", "cudnn"):
    config.model.attention_impl = impl
    results.append(loss_and_grads(config, tokens))
  (loss_xla, grads_xla), (loss_cudnn, grads_cudnn) = results
  np.testing.assert_allclose(loss_cudnn, loss_xla, rtol=1e-2)
  for a, b in zip(jax.tree.leaves(grads_xla), jax.tree.leaves(grads_cudnn)):
    scale = float(jnp.abs(a).max()) + 1e-6
    assert float(jnp.abs(a - b).max()) / scale < 5e-2
