"""The composed generator: incremental logits equal teacher-forced ones for every
preset; strategies and constraints do what they say; bad requests fail clearly."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm import decode
from mgm.data.tokenizer import EOS, PAD
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_params

TEXT = "Hi there. Go!\n\nNew para, ok; more words here. End"
PROMPTS = ["", "Hi", "Hi there. G", "Hi there. Go!\n\nNew pa"]   # lengths 0, 2, 11, 21


@pytest.fixture(scope="module", params=lm_configs.MODELS + ("megabyte-linear-upsampling",))
def preset(request):
  name = request.param.split("-")[0]
  config = lm_configs.get_config(f"model={name},size=tiny")
  if request.param.endswith("linear-upsampling"):
    config.model.levels[0].upsample = "linear"
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(0), (2, config.data.seq_len))
  return model, params, config.data.seq_len


def run(model, params, seq_len, spec, prompts=PROMPTS, seed=0, record=False):
  tokens, lengths = decode.pack_prompts(prompts, spec, model, seq_len)
  out, trace = decode.generate(model, params, tokens, lengths, jax.random.key(seed), spec,
                               record_logits=record)
  return np.asarray(out), np.asarray(lengths), None if trace is None else np.asarray(trace)


def teacher_forced(model, params, out):
  return np.asarray(model.apply({"params": params}, jnp.asarray(out)))


def test_incremental_logits_equal_teacher_forced(preset):
  model, params, seq_len = preset
  spec = decode.DecodeSpec(strategy="sample", max_new=32, temperature=1.0, stop_at_eos=False)
  out, lengths, trace = run(model, params, seq_len, spec, record=True)
  reference = teacher_forced(model, params, out)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(trace[b], reference[b, n:n + spec.max_new], atol=1e-5, rtol=1e-5,
                               err_msg=f"row {b} (prompt of {n} bytes)")


def allowed_argmax(logits):
  logits = logits.copy()
  logits[..., [PAD, 257]] = -np.inf
  return logits.argmax(-1)


@pytest.mark.parametrize("name", ["flat", "mgm3"])
def test_greedy_is_the_argmax_and_beam_1_and_top_k_1_equal_it(name):
  config = lm_configs.get_config(f"model={name},size=tiny")
  model = LM(spec_lib.from_config(config.model))
  params, seq_len = init_params(model, jax.random.key(0), (2, 64)), config.data.seq_len
  greedy = decode.DecodeSpec(strategy="greedy", max_new=24, stop_at_eos=False)
  out, lengths, _ = run(model, params, seq_len, greedy)
  reference = teacher_forced(model, params, out)
  for b, n in enumerate(lengths):
    np.testing.assert_array_equal(out[b, n:n + 24], allowed_argmax(reference[b, n:n + 24]))
  beam1, _, _ = run(model, params, seq_len,
                    dataclasses.replace(greedy, strategy="beam", beam_size=1))
  top1, _, _ = run(model, params, seq_len,
                   dataclasses.replace(greedy, strategy="sample", top_k=1), seed=3)
  np.testing.assert_array_equal(beam1, out)
  np.testing.assert_array_equal(top1, out)


@pytest.fixture(scope="module")
def mgm3():
  config = lm_configs.get_config("model=mgm3,size=tiny")
  model = LM(spec_lib.from_config(config.model))
  return model, init_params(model, jax.random.key(1), (2, 64)), config.data.seq_len


def test_top_p_tokens_lie_inside_the_nucleus(mgm3):
  model, params, seq_len = mgm3
  spec = decode.DecodeSpec(strategy="sample", max_new=32, temperature=0.7, top_p=0.3,
                           stop_at_eos=False)
  out, lengths, trace = run(model, params, seq_len, spec, record=True, seed=5)
  for b, n in enumerate(lengths):
    for i in range(spec.max_new):
      logits = np.array(decode.constrain(jnp.asarray(trace[b, i][None]), i, spec))[0] / 0.7
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      order = np.argsort(-probs)
      mass_before = np.cumsum(probs[order]) - probs[order]
      nucleus = set(order[mass_before < 0.3].tolist())
      assert out[b, n + i] in nucleus


def test_banned_tokens_never_appear_and_forced_prefix_leads(mgm3):
  model, params, seq_len = mgm3
  spec = decode.from_config(sample_cfg(banned="aeiou .", forced_prefix="zz", max_new_tokens=40))
  out, lengths, _ = run(model, params, seq_len, spec, seed=2)
  for b, n in enumerate(lengths):
    new = out[b, n:n + 40]
    assert not set(new.tolist()) & set(b"aeiou .")
    assert new[:2].tolist() == list(b"zz")


def test_stop_sequences_stop_and_min_length_holds(mgm3):
  model, params, seq_len = mgm3
  # a high temperature over a random model emits ' ' and 'e' often
  spec = decode.from_config(sample_cfg(stop=(" ", "e"), min_new_tokens=5, max_new_tokens=40,
                                       temperature=3.0))
  out, lengths, _ = run(model, params, seq_len, spec, seed=4)
  stopped_early = 0
  for b, n in enumerate(lengths):
    new = out[b, n:n + 40]
    written = int(np.sum(new != PAD))
    assert written >= 5                                       # min length
    assert np.all(new[written:] == PAD)                       # nothing after the stop
    hits = [i for i in range(5, written) if new[i] in (ord(" "), ord("e"), EOS)]
    assert hits in ([], [written - 1])                        # stops at the first one
    stopped_early += written < 40
  assert stopped_early, "the stop sequences never fired; the test would prove nothing"


def sample_cfg(**overrides):
  config = lm_configs.get_config("model=mgm3,size=tiny").sample
  config.update(overrides)
  return config


@pytest.mark.parametrize("overrides,field", [
    (dict(beam_size=300, strategy="beam"), "sample.beam_size"),
    (dict(min_new_tokens=50, max_new_tokens=10), "sample.min_new_tokens"),
    (dict(forced_prefix="ab", banned="b"), "sample.forced_prefix"),
    (dict(forced_prefix="abcdef", max_new_tokens=3), "sample.forced_prefix"),
    (dict(top_p=0.0), "sample.top_p"),
    (dict(top_k=-1), "sample.top_k"),
    (dict(strategy="typical"), "sample.strategy"),
])
def test_contradictory_or_impossible_requests_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    decode.from_config(sample_cfg(**overrides))


def test_a_prompt_longer_than_the_model_is_refused(mgm3):
  model, _, seq_len = mgm3
  spec = decode.DecodeSpec(max_new=8)
  with pytest.raises(ConfigError, match=r"sample\.prompt"):
    decode.pack_prompts(["x" * seq_len], spec, model, seq_len)
  with pytest.raises(ConfigError, match=r"sample\.max_new_tokens"):
    decode.pack_prompts(["x" * (seq_len - 4)], spec, model, seq_len)
