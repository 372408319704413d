"""Beam search against brute force: with the beam as wide as the candidate set it
returns the exact optimum of the length-penalised score (early EOS, stop strings of
several bytes, forced prefixes, repetition penalty, no repeated n-grams); a narrow
beam equals a plain re-implementation that re-reads every hypothesis from scratch,
so each hypothesis must carry its own generator state."""
import dataclasses

import jax
import numpy as np
import pytest

import reference_decode as ref
from configs import lm as lm_configs
from mgm import decode
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from jitted import init_params

ALLOWED = b"ab "          # the toy vocabulary: these bytes and EOS
TOY_BANNED = tuple(sorted(set(range(256)) - set(ALLOWED)))
PROMPTS = [b"", b"b"]


@pytest.fixture(scope="module")
def mgm3():
  """mgm3 (sentence > word > byte levels: a space closes a word, so hypotheses
  differ in their coarse-level state too), untrained, logits sharpened x3 so that
  hypotheses' scores lie far apart; and the same model with EOS's output row
  replaced by the byte 'q''s, which makes EOS less likely (longer optima)."""
  config = lm_configs.get_config("model=mgm3,size=tiny")
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(7), (2, config.data.seq_len))
  kernel = params["unembed"]["kernel"]
  sharp = kernel.unbox() * 3.0
  variants = {"eos-likely": sharp, "eos-like-q": sharp.at[:, decode.EOS].set(sharp[:, ord("q")])}
  variants = {name: dict(params, unembed={"kernel": kernel.replace_boxed(w)})
              for name, w in variants.items()}
  return model, config.data.seq_len, {
      name: (p, ref.TeacherForced(model, p, config.data.seq_len)) for name, p in variants.items()}


def beam_search(model, params, seq_len, prompts, settings):
  tokens, lengths = decode.pack_tokens([np.frombuffer(p, np.uint8).astype(np.int32)
                                        for p in prompts], settings, model, seq_len)
  out, _ = decode.generate(model, params, tokens, lengths, jax.random.key(0), settings)
  out = np.asarray(out)
  return [[int(t) for t in row[n:n + settings.max_new] if t != decode.PAD]
          for row, n in zip(out, np.asarray(lengths))]


def show(tokens):
  return "".join(chr(t) if t < 256 else "<EOS>" if t == decode.EOS else "?" for t in tokens)


TOY = decode.DecodeSettings(strategy="beam", max_new=4, beam_size=128, banned=TOY_BANNED)
CASES = {   # name: (model variant, settings); each a different rule decides the optimum
    "early-eos": ("eos-likely", dataclasses.replace(TOY, length_penalty=1.0)),
    "length-penalty-stop-strings": ("eos-like-q", dataclasses.replace(
        TOY, length_penalty=3.0, stop=(tuple(b"a "), tuple(b"bb")))),
    "forced-prefix-stop-at-eos-off": ("eos-like-q", dataclasses.replace(
        TOY, forced=tuple(b"b"), stop_at_eos=False, stop=(tuple(b" b"),))),
    "repetition-penalty-no-repeat-2grams": ("eos-like-q", dataclasses.replace(
        TOY, repetition_penalty=2.0, no_repeat_ngram=2, length_penalty=0.5, min_new=1)),
}


@pytest.mark.parametrize("case", CASES)
def test_full_width_beam_returns_the_exact_optimum(mgm3, case):
  model, seq_len, variants = mgm3
  variant, settings = CASES[case]
  params, tf = variants[variant]
  got = beam_search(model, params, seq_len, PROMPTS, settings)
  flips = 0
  for prompt, tokens in zip(PROMPTS, got):
    ranked = ref.exhaustive(tf, list(prompt), settings)
    assert len(ranked) <= settings.beam_size, "the beam is narrower than the candidate set"
    assert ranked[0][0] - ranked[1][0] > 1e-3, "a near tie: the test would be flaky"
    assert tokens == ranked[0][1], (
        f"{case}, prompt {prompt!r}: beam {show(tokens)!r}, optimum {show(ranked[0][1])!r}")
    if settings.length_penalty > 1:
      raw = ref.exhaustive(tf, list(prompt), dataclasses.replace(settings, length_penalty=0.0))
      flips += raw[0][1] != ranked[0][1]
  if settings.length_penalty > 1:
    assert flips, "the length penalty never changed the optimum; the test would prove little"
  if case == "early-eos":
    assert any(t and t[-1] == decode.EOS and len(t) < settings.max_new for t in got), "no early EOS"


NARROW = {
    "plain": decode.DecodeSettings(strategy="beam", max_new=10, beam_size=4, stop_at_eos=False),
    "penalties-stops": decode.DecodeSettings(
        strategy="beam", max_new=10, beam_size=4, min_new=2, repetition_penalty=1.3,
        no_repeat_ngram=3, length_penalty=0.6, stop=(tuple(b"e "), tuple(b"\n"))),
}


@pytest.mark.parametrize("case", NARROW)
def test_beam_4_equals_a_beam_that_rereads_every_hypothesis(mgm3, case):
  """Fails if a hypothesis continued from another's cache, buffer or seen ids."""
  model, seq_len, variants = mgm3
  params, tf = variants["eos-likely"]
  settings = NARROW[case]
  prompts = [b"", b"The cat. A dog", b"Hi"]
  got = beam_search(model, params, seq_len, prompts, settings)
  for prompt, tokens in zip(prompts, got):
    want = ref.beam(tf, list(prompt), settings)
    assert tokens == want, f"{case}, prompt {prompt!r}: {show(tokens)!r} != {show(want)!r}"
