"""Cached conditioned generation (decode.generate with `cond`: the memory's keys
and values projected once at prefill) against the teacher-forced model with its
encoders (LM.apply(..., cond=)): for a captioner (flat and mgm3 decoders, image
encoder) and a seq2seq model (text encoder), sampled logits equal the
teacher-forced ones, greedy picks their argmax, and beam search equals a plain
beam search over teacher-forced passes. Each row reads its own condition only:
two rows with the same prompt and condition agree whatever the third holds, and
changing the third's image or one real source byte changes its logits alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_decode as ref
from configs import caption as caption_configs
from configs import seq2seq as seq2seq_configs
from jitted import init_params
from mgm import decode
from mgm.data.tokenizer import BOS, EOS, PAD
from mgm.model import spec as spec_lib
from mgm.model.lm import LM

CASES = {"caption-flat": (caption_configs, "size=tiny"),
         "caption-mgm3": (caption_configs, "model=mgm3,size=tiny"),
         "seq2seq-flat": (seq2seq_configs, "size=tiny")}
PROMPTS = [b"A re", b"A re", b"Th"]    # rows 0 and 1: the same prompt and condition
SOURCE_LENGTHS = (20, 20, 33)           # real source bytes per row (seq2seq)
NEW = 10
# Forced bytes close words and a sentence while the cache decodes, so mgm3's
# coarse (cross-attending) levels run steps too, not only the prefill.
GREEDY = decode.DecodeSettings(strategy="greedy", max_new=NEW, stop_at_eos=False)
FORCED = decode.DecodeSettings(strategy="greedy", max_new=NEW, stop_at_eos=False,
                               forced=tuple(b"ok. Then a"))
SAMPLE = decode.DecodeSettings(strategy="sample", max_new=NEW, stop_at_eos=False,
                               temperature=1.5, forced=tuple(b"ok. The "))
BEAM = decode.DecodeSettings(strategy="beam", max_new=7, beam_size=3, forced=tuple(b"ok. "))


def conditions(spec, seed: int):
  """Random conditioning inputs of len(PROMPTS) rows, rows 0 and 1 equal: images
  uint8 [B, H, W, C], or sources int32 [B, S] of SOURCE_LENGTHS random bytes then PAD."""
  rng = np.random.default_rng(seed)
  enc = spec.encoders[0]
  if enc.encoder_kind.input == "image":
    image = rng.integers(0, 256, (len(PROMPTS), enc.image_size, enc.image_size, enc.channels))
    image[1] = image[0]
    return {"image": jnp.asarray(image, jnp.uint8)}
  source = np.full((len(PROMPTS), enc.max_len), PAD, np.int32)
  for row, n in enumerate(SOURCE_LENGTHS):
    source[row, :n] = rng.integers(0, 256, n)
  source[1] = source[0]
  return {"source": jnp.asarray(source)}


@pytest.fixture(scope="module", params=CASES)
def case(request):
  """(model, params, tokens [B, S], lengths [B], cond, teacher-forced logits fn)."""
  configs, preset = CASES[request.param]
  config = configs.get_config(preset)
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(3), (len(PROMPTS), config.data.seq_len))
  prompts = [np.frombuffer(p, np.uint8).astype(np.int32) for p in PROMPTS]
  tokens, lengths = decode.pack_tokens(prompts, GREEDY, model, config.data.seq_len)
  forward = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cond=c))
  return model, params, tokens, lengths, conditions(model.spec, 0), forward


def generate(case, settings, cond=None, record_logits=True):
  model, params, tokens, lengths, default, _ = case
  return decode.generate(model, params, tokens, lengths, jax.random.key(5), settings,
                         record_logits=record_logits, cond=default if cond is None else cond)


def at_new_positions(logits, lengths, count):
  """Teacher-forced logits [B, S, V] -> those predicting each new token [B, count, V]."""
  index = np.asarray(lengths)[:, None] + np.arange(count)
  return np.take_along_axis(np.asarray(logits), index[..., None], axis=1)


def test_sampled_logits_equal_teacher_forced_with_the_encoders(case):
  _, params, _, lengths, cond, forward = case
  buf, trace = generate(case, SAMPLE)
  reference = at_new_positions(forward(params, buf, cond), lengths, NEW)
  np.testing.assert_allclose(trace, reference, atol=2e-5, rtol=1e-5)


def test_greedy_picks_the_teacher_forced_argmax(case):
  _, params, _, lengths, cond, forward = case
  buf, _ = generate(case, GREEDY)
  reference = at_new_positions(forward(params, buf, cond), lengths, NEW)
  reference[..., [PAD, BOS, EOS]] = -np.inf          # never emitted (stop_at_eos off)
  new = np.take_along_axis(np.asarray(buf), np.asarray(lengths)[:, None] + np.arange(NEW), 1)
  np.testing.assert_array_equal(new, reference.argmax(-1))


class ConditionedTeacherForced:
  """reference_decode's next-token logits for texts that all read one row's condition."""

  def __init__(self, forward, params, cond, row: int, width: int):
    self.forward, self.params, self.width = forward, params, width
    self.rows = BEAM.beam_size
    self.cond = {k: jnp.repeat(v[row:row + 1], self.rows, axis=0) for k, v in cond.items()}

  def __call__(self, texts):
    assert len(texts) <= self.rows
    buf = np.full((self.rows, self.width), PAD, np.int32)
    for r, t in enumerate(texts):
      buf[r, :len(t)] = t
    logits = np.asarray(self.forward(self.params, jnp.asarray(buf), self.cond), np.float64)
    return np.stack([logits[r, len(t)] for r, t in enumerate(texts)])


def test_beam_search_equals_a_teacher_forced_beam_search(case):
  _, params, tokens, lengths, cond, forward = case
  buf, _ = generate(case, BEAM, record_logits=False)
  for row, prompt in enumerate(PROMPTS):
    tf = ConditionedTeacherForced(forward, params, cond, row, tokens.shape[1])
    expected = ref.beam(tf, list(prompt), BEAM)
    n = int(lengths[row])
    got = [int(t) for t in np.asarray(buf)[row, n:n + BEAM.max_new] if t != PAD]
    assert got == expected, f"row {row}"


def perturbed(cond, row: int):
  """`cond` with row `row` changed: a new image, or one real source byte."""
  if "image" in cond:
    return {"image": cond["image"].at[row].set(255 - cond["image"][row])}
  source = cond["source"]
  return {"source": source.at[row, 7].set((source[row, 7] + 1) % 256)}


def test_each_row_reads_its_own_condition_only(case):
  cond = case[4]
  _, trace = generate(case, FORCED)
  _, changed = generate(case, FORCED, perturbed(cond, 2))
  trace, changed = np.asarray(trace), np.asarray(changed)
  np.testing.assert_allclose(trace[1], trace[0], atol=1e-5)   # same prompt and condition
  np.testing.assert_allclose(changed[:2], trace[:2], atol=1e-5)   # another row's changed
  assert np.abs(changed[2, 0] - trace[2, 0]).max() > 1e-3        # its own changed
