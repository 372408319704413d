"""The composed generator: incremental logits equal teacher-forced ones for every
preset; strategies and constraints do what they say; bad requests fail clearly."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
import reference_decode as ref
from mgm import decode, samples
from mgm.data.tokenizer import EOS, PAD
from mgm.errors import ConfigError
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from jitted import init_params

TEXT = "Hi there. Go!\n\nNew para, ok; more words here. End"
PROMPTS = ["", "Hi", "Hi there. G", "Hi there. Go!\n\nNew pa"]   # lengths 0, 2, 11, 21


UPSAMPLED = {"megabyte-linear-upsampling": "linear",          # preset-kind: every coarse
             "hourglass-attention-upsampling": "attention:linear",   # level's upsample
             "mgm3-attention-upsampling": "attention"}


@pytest.fixture(scope="module", params=lm_configs.MODELS + tuple(UPSAMPLED))
def preset(request):
  name = request.param.split("-")[0]
  config = lm_configs.get_config(f"model={name},size=tiny")
  if request.param in UPSAMPLED:
    for level in config.model.levels[:-1]:
      level.upsample = UPSAMPLED[request.param]
  model = LM(spec_lib.from_config(config.model))
  params = init_params(model, jax.random.key(0), (2, config.data.seq_len))
  return model, params, config.data.seq_len


def generate(model, params, seq_len, settings, prompts=PROMPTS, seed=0, record=False):
  tokens, lengths = decode.pack_prompts(prompts, settings, model, seq_len)
  out, trace = decode.generate(model, params, tokens, lengths, jax.random.key(seed), settings,
                               record_logits=record)
  return np.asarray(out), np.asarray(lengths), None if trace is None else np.asarray(trace)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, tokens):
  return model.apply({"params": params}, tokens)


def teacher_forced(model, params, out):
  """The model's logits of the whole rows `out` (jitted: compiled once per model
  and shape; op by op, a forward pass compiles each of its ops)."""
  return np.asarray(_apply(model, params, jnp.asarray(out)))


def test_incremental_logits_equal_teacher_forced(preset):
  model, params, seq_len = preset
  settings = decode.DecodeSettings(strategy="sample", max_new=32, temperature=1.0,
                                   stop_at_eos=False)
  out, lengths, trace = generate(model, params, seq_len, settings, record=True)
  reference = teacher_forced(model, params, out)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(trace[b], reference[b, n:n + settings.max_new], atol=1e-5, rtol=1e-5,
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
  greedy = decode.DecodeSettings(strategy="greedy", max_new=24, stop_at_eos=False)
  out, lengths, _ = generate(model, params, seq_len, greedy)
  reference = teacher_forced(model, params, out)
  for b, n in enumerate(lengths):
    np.testing.assert_array_equal(out[b, n:n + 24], allowed_argmax(reference[b, n:n + 24]))
  beam1, _, _ = generate(model, params, seq_len,
                         dataclasses.replace(greedy, strategy="beam", beam_size=1))
  top1, _, _ = generate(model, params, seq_len,
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
  settings = decode.DecodeSettings(strategy="sample", max_new=32, temperature=0.7, top_p=0.3,
                                   stop_at_eos=False)
  out, lengths, trace = generate(model, params, seq_len, settings, record=True, seed=5)
  for b, n in enumerate(lengths):
    for i in range(settings.max_new):
      logits = np.array(decode.constrain(jnp.asarray(trace[b, i][None]), i, settings))[0] / 0.7
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      order = np.argsort(-probs)
      mass_before = np.cumsum(probs[order]) - probs[order]
      nucleus = set(order[mass_before < 0.3].tolist())
      assert out[b, n + i] in nucleus


def test_banned_tokens_never_appear_and_forced_prefix_leads(mgm3):
  model, params, seq_len = mgm3
  settings = decode.from_config(sample_cfg(banned="aeiou .", forced_prefix="zz",
                                           max_new_tokens=40))
  out, lengths, _ = generate(model, params, seq_len, settings, seed=2)
  for b, n in enumerate(lengths):
    new = out[b, n:n + 40]
    assert not set(new.tolist()) & set(b"aeiou .")
    assert new[:2].tolist() == list(b"zz")


def test_stop_sequences_stop_and_min_length_holds(mgm3):
  model, params, seq_len = mgm3
  # a high temperature over a random model emits ' ' and 'e' often
  settings = decode.from_config(sample_cfg(stop=(" ", "e"), min_new_tokens=5,
                                           max_new_tokens=40, temperature=3.0))
  out, lengths, _ = generate(model, params, seq_len, settings, seed=4)
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
  with config.ignore_type():
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
    (dict(repetition_penalty=0.0), "sample.repetition_penalty"),
    (dict(repetition_penalty=-1.2), "sample.repetition_penalty"),
    (dict(repetition_penalty=math.nan), "sample.repetition_penalty"),
    (dict(repetition_penalty=math.inf), "sample.repetition_penalty"),
    (dict(no_repeat_ngram_size=-1), "sample.no_repeat_ngram_size"),
    (dict(no_repeat_ngram_size=2.5), "sample.no_repeat_ngram_size"),
    (dict(temperature=math.nan), "sample.temperature"),
    (dict(length_penalty=math.inf), "sample.length_penalty"),
    (dict(strategy="greedy", num_samples=2), "sample.num_samples"),
    (dict(strategy="beam", num_samples=3), "sample.num_samples"),
    (dict(temperature=0.0, num_samples=2), "sample.num_samples"),
    (dict(top_k=1, num_samples=2), "sample.num_samples"),
])
def test_contradictory_or_impossible_requests_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    decode.from_config(sample_cfg(**overrides))


def test_a_prompt_longer_than_the_model_is_refused(mgm3):
  model, _, seq_len = mgm3
  settings = decode.DecodeSettings(max_new=8)
  with pytest.raises(ConfigError, match=r"sample\.prompt"):
    decode.pack_prompts(["x" * seq_len], settings, model, seq_len)
  with pytest.raises(ConfigError, match=r"sample\.max_new_tokens"):
    decode.pack_prompts(["x" * (seq_len - 4)], settings, model, seq_len)


def test_every_preset_and_one_deterministic_sample_per_prompt_are_accepted():
  for model in lm_configs.MODELS:
    for size in lm_configs.SIZES:
      decode.from_config(lm_configs.get_config(f"model={model},size={size}").sample)
  for strategy in ("greedy", "beam"):
    settings = decode.from_config(sample_cfg(strategy=strategy, num_samples=1,
                                             repetition_penalty=1.2, no_repeat_ngram_size=3))
    assert (settings.strategy, settings.repetition_penalty, settings.no_repeat_ngram) == (
        strategy, 1.2, 3)


# -- each sampling field against its definition --------------------------------

def first_stop(text, start, stops, min_new):
  """Index (into the new tokens) of the token completing the first whole stop string."""
  for i in range(max(min_new - 1, 0), len(text) - start):
    if any(text[:start + i + 1][-len(s):] == list(s) for s in stops if len(s) <= start + i + 1):
      return i
  return None


def test_a_stop_string_of_several_bytes_ends_the_row_after_its_first_whole_occurrence(mgm3):
  """The same seed draws the same tokens, so the stopped output is the unstopped one
  cut right after the first complete stop string (which may begin in the prompt)."""
  model, params, seq_len = mgm3
  free = decode.DecodeSettings(strategy="sample", max_new=40, temperature=1.0, stop_at_eos=False)
  full, lengths, _ = generate(model, params, seq_len, free, seed=4)
  new = lambda b: full[b, lengths[b]:lengths[b] + 40].tolist()
  stops = (tuple(new(2)[12:15]), tuple(new(3)[25:27]), tuple(b"Go!\n\nN"))
  settings = dataclasses.replace(free, stop=stops, min_new=3)
  out, _, _ = generate(model, params, seq_len, settings, seed=4)
  cut = 0
  for b, n in enumerate(lengths):
    i = first_stop(full[b, :n + 40].tolist(), int(n), stops, settings.min_new)
    want = new(b) if i is None else new(b)[:i + 1] + [PAD] * (39 - i)
    assert out[b, n:n + 40].tolist() == want, f"row {b}, stops {stops}"
    cut += i is not None
  assert cut >= 2, "the stop strings rarely fired; the test would prove little"


def test_sampled_tokens_lie_in_the_top_k_and_not_only_the_top_1(mgm3):
  model, params, seq_len = mgm3
  settings = decode.DecodeSettings(strategy="sample", max_new=24, top_k=3, stop_at_eos=False)
  out, lengths, trace = generate(model, params, seq_len, settings, record=True, seed=6)
  ranks = []
  for b, n in enumerate(lengths):
    logits = np.asarray(decode.constrain(jnp.asarray(trace[b]), 0, settings))
    order = np.argsort(-logits, axis=-1)
    ranks += [int(np.flatnonzero(order[i] == out[b, n + i])[0]) for i in range(24)]
  assert max(ranks) < 3, f"a token of rank {max(ranks)} was drawn with top_k=3"
  assert min(ranks) == 0 and sum(r > 0 for r in ranks) > 10, ranks


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.5, 0, 1.0), (2.0, 4, 1.0),
                                                     (1.0, 0, 0.7), (0.8, 5, 0.9)])
def test_pick_draws_from_the_tempered_truncated_distribution(temperature, top_k, top_p):
  """Frequencies of 40k draws against softmax(logits / T) cut to the top-k, then to
  the smallest set of tokens holding top_p of the mass, renormalised."""
  logits = np.array([2.0, 1.5, 1.0, 0.7, 0.5, 0.0, -0.5, -1.0, -2.0])
  probs = np.exp(logits / temperature)
  probs[top_k or len(logits):] = 0.0
  probs /= probs.sum()
  probs[(np.cumsum(probs) - probs) >= top_p] = 0.0
  probs /= probs.sum()
  settings = decode.DecodeSettings(strategy="sample", temperature=temperature, top_k=top_k,
                                   top_p=top_p)
  n = 40_000
  draws = decode.pick(jnp.tile(jnp.asarray(logits, jnp.float32), (n, 1)),
                      jax.random.key(11), settings)
  freq = np.bincount(np.asarray(draws), minlength=len(logits)) / n
  assert np.all(freq[probs == 0] == 0)
  assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / n)), (freq, probs)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_ids():
  tokens, lengths = jnp.asarray([[3, 1, 3, 4], [2, 0, 0, 4]]), jnp.asarray([3, 1])
  seen = decode.seen_tokens(tokens, lengths, 5)           # the prompts' ids only
  assert np.asarray(seen).tolist() == [[False, True, False, True, False],
                                       [False, False, True, False, False]]
  logits = jnp.asarray([[2.0, 2.0, -2.0, -1.0, 1.0], [2.0, 2.0, -2.0, -1.0, 1.0]])
  np.testing.assert_allclose(decode.repetition_penalty(logits, seen, 2.0),
                             [[2.0, 1.0, -2.0, -2.0, 1.0], [2.0, 2.0, -4.0, -1.0, 1.0]])
  np.testing.assert_allclose(decode.repetition_penalty(logits, seen, 0.5),
                             [[2.0, 4.0, -2.0, -0.5, 1.0], [2.0, 2.0, -1.0, -1.0, 1.0]])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_bans_are_the_ids_completing_an_ngram_already_present(n):
  rng = np.random.default_rng(n)
  buffer = rng.integers(0, 3, size=(16, 24)).astype(np.int32)   # 3 ids: many repeats
  pos = rng.integers(0, 24, size=16).astype(np.int32)
  bans = np.asarray(decode.ngram_bans(jnp.asarray(buffer), jnp.asarray(pos), n, 5))
  for b in range(16):
    want = ref.ngram_banned(buffer[b, :pos[b]].tolist(), n)
    assert set(np.flatnonzero(bans[b]).tolist()) == want, f"row {b}, pos {pos[b]}"


AB_ONLY = tuple(sorted(set(range(256)) - set(b"ab")))   # a restricted vocabulary: a, b, EOS


def new_rows(out, lengths, count):
  return [out[b, n:n + count].tolist() for b, n in enumerate(lengths)]


def test_eos_ends_a_row_only_with_stop_at_eos_and_after_min_new_tokens(mgm3):
  model, params, seq_len = mgm3
  kernel = params["unembed"]["kernel"]        # EOS as likely as 'a': p ~ 1/3 a step
  params = dict(params, unembed={"kernel": kernel.replace_boxed(
      kernel.unbox().at[:, EOS].set(kernel.unbox()[:, ord("a")]))})
  settings = decode.DecodeSettings(strategy="sample", max_new=16, banned=AB_ONLY, stop_at_eos=True)
  out, lengths, _ = generate(model, params, seq_len, settings, seed=8)
  rows = new_rows(out, lengths, 16)
  for row in rows:
    end = row.index(EOS) + 1 if EOS in row else 16
    assert set(row[:end - 1]) <= set(b"ab") and row[end:] == [PAD] * (16 - end), row
  assert sum(EOS in row[:6] for row in rows) >= 2, "EOS was rare; the test would prove little"
  late, _, _ = generate(model, params, seq_len, dataclasses.replace(settings, min_new=6), seed=8)
  for row in new_rows(late, lengths, 16):
    assert EOS not in row[:6] and PAD not in row[:6], row
  never, _, _ = generate(model, params, seq_len, dataclasses.replace(settings, stop_at_eos=False),
                         seed=8)
  for row in new_rows(never, lengths, 16):
    assert set(row) <= set(b"ab"), row


@pytest.mark.parametrize("rule", [dict(repetition_penalty=1.8), dict(no_repeat_ngram=2)])
def test_greedy_with_penalties_is_the_argmax_of_the_penalised_teacher_forced_logits(mgm3, rule):
  model, params, seq_len = mgm3
  settings = decode.DecodeSettings(strategy="greedy", max_new=24, stop_at_eos=False, **rule)
  out, lengths, _ = generate(model, params, seq_len, settings)
  reference = teacher_forced(model, params, out)
  changed = 0
  for b, n in enumerate(lengths):
    for i in range(24):
      text = out[b, :n + i].tolist()
      want = np.argmax(ref.log_probs(reference[b, n + i], text, i, settings))
      assert out[b, n + i] == want, f"row {b}, new token {i}"
      changed += want != allowed_argmax(reference[b, n + i])
    n_gram = settings.no_repeat_ngram
    grams = [tuple(out[b, j:j + n_gram]) for j in range(n + 24 - n_gram + 1)] if n_gram else []
    for j in range(max(n - n_gram + 1, 0), len(grams)):
      assert grams[j] not in grams[:j], f"row {b} repeats the {n_gram}-gram {grams[j]}"
  assert changed, "the rule never changed a token; the test would prove nothing"


def test_samples_follow_the_prompt_file_and_sample_seed(mgm3, tmp_path):
  model, params, seq_len = mgm3
  config = lm_configs.get_config("model=mgm3,size=tiny")
  path = tmp_path / "prompts.txt"
  path.write_text("= Alpha\n\n= Beta =\n")
  config.sample.update(prompt_file=str(path), max_new_tokens=12, temperature=1.0)
  texts = samples.draw(config, model, params, step=3)
  assert [t[:len(p)] for t, p in zip(texts, ["= Alpha"] * 2 + ["= Beta ="] * 2)] == \
      ["= Alpha"] * 2 + ["= Beta ="] * 2
  assert texts[0] != texts[1], "two samples of one prompt are identical"
  assert samples.draw(config, model, params, step=3) == texts
  config.sample.seed = 1
  assert samples.draw(config, model, params, step=3) != texts
  path.write_text("\n\n")
  with pytest.raises(ConfigError, match=r"sample\.prompt_file"):
    samples.draw(config, model, params, step=3)
  config.sample.prompt_file = str(tmp_path / "missing.txt")
  with pytest.raises(ConfigError, match=r"sample\.prompt_file"):
    samples.draw(config, model, params, step=3)
