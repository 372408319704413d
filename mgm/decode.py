"""Decoding with the composed generator (mgm/model/incremental.py).

Strategies: greedy, sample (temperature, top-k, top-p), beam (length penalty).
Constraints: min/max new tokens, banned tokens, a forced prefix, stop
sequences, EOS, a repetition penalty (CTRL, Keskar et al. 2019) and no repeated
n-grams (fairseq's and HF transformers' `no_repeat_ngram_size`). Prompts of
different lengths are prefilled in one forward pass; the decode loop is one
jitted `lax.while_loop` with static shapes.

Each step's logits go through `process` (repetition penalty, n-gram bans,
then `constrain`) before a strategy sees them: sampling draws from
softmax(processed / temperature) restricted to top-k/top-p; beam scores are
sums of log_softmax(processed), i.e. log-probabilities of the distribution that
greedy decoding maximises.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mgm.data.tokenizer import EOS, PAD, VOCAB_SIZE, encode
from mgm.errors import ConfigError
from mgm.model import incremental, segment
from mgm.model.lm import LM

STRATEGIES = ("greedy", "sample", "beam")
NEG = -1e30


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """What to generate; built from `config.sample` by `from_config` (validated)."""
  strategy: str = "greedy"
  max_new: int = 64
  min_new: int = 0
  temperature: float = 1.0
  top_k: int = 0                   # 0 = off
  top_p: float = 1.0               # 1 = off
  beam_size: int = 1
  length_penalty: float = 1.0      # GNMT alpha: score / ((5 + len) / 6) ** alpha
  banned: tuple[int, ...] = ()
  stop: tuple[tuple[int, ...], ...] = ()
  forced: tuple[int, ...] = ()
  stop_at_eos: bool = True
  repetition_penalty: float = 1.0  # CTRL: seen tokens' logits / p if > 0 else * p; 1 = off
  no_repeat_ngram: int = 0         # ban tokens completing an n-gram already present; 0 = off


def _number(c, name, default):
  value = c.get(name, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ConfigError(f"sample.{name}", f"must be a finite number, got {value!r}")
  return float(value)


def _integer(c, name, default):
  value = c.get(name, default)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"sample.{name}", f"must be an integer, got {value!r}")
  return value


def from_config(sample_cfg, vocab_size: int = VOCAB_SIZE) -> DecodeSettings:
  """config.sample -> DecodeSettings; ConfigError naming the field for a bad value, a
  contradiction, or several samples per prompt from a deterministic strategy."""
  c = sample_cfg
  if c.strategy not in STRATEGIES:
    raise ConfigError("sample.strategy", f"unknown strategy {c.strategy!r}; one of {STRATEGIES}")
  settings = DecodeSettings(
      strategy=c.strategy, max_new=_integer(c, "max_new_tokens", 64),
      min_new=_integer(c, "min_new_tokens", 0), temperature=_number(c, "temperature", 1.0),
      top_k=_integer(c, "top_k", 0), top_p=_number(c, "top_p", 1.0),
      beam_size=_integer(c, "beam_size", 1), length_penalty=_number(c, "length_penalty", 1.0),
      banned=tuple(sorted(set(encode(c.banned).tolist()))),
      stop=tuple(tuple(encode(s).tolist()) for s in c.stop if s),
      forced=tuple(encode(c.forced_prefix).tolist()), stop_at_eos=bool(c.stop_at_eos),
      repetition_penalty=_number(c, "repetition_penalty", 1.0),
      no_repeat_ngram=_integer(c, "no_repeat_ngram_size", 0))
  check(settings, vocab_size)
  copies = c.get("num_samples", 1)
  if copies > 1 and deterministic(settings):
    raise ConfigError("sample.num_samples", f"{copies} samples per prompt from a deterministic "
                      f"decoder ({deterministic(settings)}) would be identical; set "
                      "--config.sample.num_samples=1 or use sample.strategy=sample")
  return settings


def deterministic(settings: DecodeSettings) -> str:
  """Why `settings` always returns the same output for a prompt ('' if it samples)."""
  if settings.strategy != "sample":
    return f"sample.strategy={settings.strategy}"
  if settings.temperature == 0:
    return "sample.temperature=0 is greedy"
  if settings.top_k == 1:
    return "sample.top_k=1 is greedy"
  return ""


def check(settings: DecodeSettings, vocab_size: int):
  """Contradictory or impossible constraints -> ConfigError naming the field."""
  if settings.max_new <= 0:
    raise ConfigError("sample.max_new_tokens", f"must be positive, got {settings.max_new}")
  if not 0 <= settings.min_new <= settings.max_new:
    raise ConfigError("sample.min_new_tokens", f"{settings.min_new} must lie in [0, "
                      f"sample.max_new_tokens={settings.max_new}]")
  if settings.beam_size < 1 or settings.beam_size > vocab_size:
    raise ConfigError("sample.beam_size", f"{settings.beam_size} must lie in [1, vocabulary "
                      f"size {vocab_size}]")
  if settings.top_k < 0 or settings.top_k > vocab_size:
    raise ConfigError("sample.top_k", f"{settings.top_k} must lie in [0, {vocab_size}] (0 = off)")
  if not 0.0 < settings.top_p <= 1.0:
    raise ConfigError("sample.top_p", f"{settings.top_p} must lie in (0, 1] (1 = off)")
  if not settings.temperature >= 0:
    raise ConfigError("sample.temperature", f"{settings.temperature} must be >= 0 (0 = greedy)")
  if not 0 < settings.repetition_penalty < math.inf:
    raise ConfigError("sample.repetition_penalty", f"{settings.repetition_penalty} must be a "
                      "finite number > 0 (1 = off, > 1 discourages repeats)")
  if settings.no_repeat_ngram < 0:
    raise ConfigError("sample.no_repeat_ngram_size", f"{settings.no_repeat_ngram} must be >= 0 "
                      "(0 = off, n bans repeating any n-gram)")
  if len(settings.forced) > settings.max_new:
    raise ConfigError("sample.forced_prefix", f"is {len(settings.forced)} bytes, longer than "
                      f"sample.max_new_tokens={settings.max_new}")
  clash = set(settings.forced) & set(settings.banned)
  if clash:
    raise ConfigError("sample.forced_prefix", f"contains banned bytes {sorted(clash)} "
                      "(sample.banned); the constraints contradict each other")
  if len(settings.banned) >= 256 and not settings.stop_at_eos:
    raise ConfigError("sample.banned", "bans every byte; nothing can be generated")


def pack_prompts(prompts: list[str], settings: DecodeSettings, model: LM, max_len: int):
  """Prompts -> (tokens [B, S] right-padded with PAD, lengths [B]); see pack_tokens."""
  return pack_tokens([encode(p) for p in prompts], settings, model, max_len)


def pack_tokens(prompts: list, settings: DecodeSettings, model: LM, max_len: int):
  """Token prompts -> (tokens [B, S] right-padded with PAD, lengths [B]); S holds
  prompt + max_new and is a multiple of every fixed patch, so the fixed levels stay static."""
  longest = max(len(e) for e in prompts)
  if longest + settings.max_new > max_len:
    field = "sample.prompt" if longest >= max_len else "sample.max_new_tokens"
    raise ConfigError(field, f"a prompt of {longest} bytes plus {settings.max_new} new tokens "
                      f"exceeds the model's length {max_len} (data.seq_len); shorten one")
  patch = math.lcm(1, *[segment.fixed_patch(model.spec.levels[:-1], i) or 1
                        for i in range(len(model.spec.levels) - 1)])
  size = -(-(longest + settings.max_new + 1) // patch) * patch
  buf = np.full((len(prompts), size), PAD, np.int32)
  for i, e in enumerate(prompts):
    buf[i, :len(e)] = e
  return jnp.asarray(buf), jnp.asarray([len(e) for e in prompts], jnp.int32)


# -- logits processing ---------------------------------------------------------

def constrain(logits, i, settings: DecodeSettings):
  """Apply banned tokens, min length and the forced prefix at new-token index i."""
  vocab = jnp.arange(logits.shape[-1])
  banned = jnp.isin(vocab, jnp.asarray(settings.banned + (256, 257), jnp.int32))  # PAD, BOS
  banned |= (vocab == EOS) & ((i < settings.min_new) | (not settings.stop_at_eos))
  logits = jnp.where(banned, NEG, logits)
  if settings.forced:          # the forced byte wins over any penalty: log-probability 0
    forced = jnp.asarray(settings.forced, jnp.int32)[jnp.minimum(i, len(settings.forced) - 1)]
    logits = jnp.where(i < len(settings.forced), jnp.where(vocab == forced, 0.0, NEG), logits)
  return logits


def seen_tokens(tokens, lengths, vocab: int):
  """Which ids occur in each prompt: bool [B, V] from tokens [B, S], lengths [B]."""
  valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
  rows = jnp.arange(tokens.shape[0])[:, None]
  return jnp.zeros((tokens.shape[0], vocab), bool).at[rows, tokens].max(valid)


def repetition_penalty(logits, seen, penalty: float):
  """CTRL's penalty (Keskar et al. 2019, as HF transformers applies it): the logit of
  every id in `seen` [B, V] is divided by `penalty` if positive, else multiplied."""
  return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def ngram_bans(buffer, pos, n: int, vocab: int):
  """Ids that would complete an n-gram already present (fairseq/HF no_repeat_ngram_size).

  buffer [B, S] holds each row's text before pos [B], the position about to be
  written; returns bool [B, V]: id v is banned where some j + n <= pos has
  buffer[j : j + n - 1] == buffer[pos - n + 1 : pos] and buffer[j + n - 1] == v.
  """
  width = buffer.shape[1] - n + 1                      # n-gram start positions j
  match = jnp.arange(width)[None] <= (pos - n)[:, None]
  for m in range(n - 1):
    now = jnp.take_along_axis(buffer, jnp.clip(pos - n + 1 + m, 0)[:, None], axis=1)
    match &= buffer[:, m:m + width] == now
  rows = jnp.arange(buffer.shape[0])[:, None]
  return jnp.zeros((buffer.shape[0], vocab), bool).at[rows, buffer[:, n - 1:]].max(match)


def process(logits, buffer, pos, seen, i, settings: DecodeSettings):
  """Everything but the strategy, for new-token index i written at pos [B]: the
  repetition penalty over `seen` [B, V], n-gram bans over `buffer`, `constrain`."""
  if settings.repetition_penalty != 1.0:
    logits = repetition_penalty(logits, seen, settings.repetition_penalty)
  if settings.no_repeat_ngram:
    logits = jnp.where(ngram_bans(buffer, pos, settings.no_repeat_ngram, logits.shape[-1]),
                       NEG, logits)
  return constrain(logits, i, settings)


def nucleus(logits, top_k: int, top_p: float):
  """Mask everything outside the top-k and the top-p nucleus (float32 [B, V])."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs        # mass of strictly better tokens
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, NEG)
  return logits


def pick(logits, key, settings: DecodeSettings):
  if settings.strategy == "greedy" or settings.temperature == 0:
    return jnp.argmax(logits, axis=-1)
  logits = nucleus(logits / settings.temperature, settings.top_k, settings.top_p)
  return jax.random.categorical(key, logits)


def stopped(buffer, pos, token, i, settings: DecodeSettings):
  """Does a row end after writing `token` at pos [B] (its i-th new token)?"""
  done = jnp.full(token.shape, i + 1 >= settings.max_new)
  may_stop = i + 1 >= settings.min_new
  if settings.stop_at_eos:
    done |= may_stop & (token == EOS)
  for seq in settings.stop:
    k = len(seq)
    index = pos[:, None] - k + 1 + jnp.arange(k)
    tail = jnp.take_along_axis(buffer, jnp.clip(index, 0), axis=1)
    done |= may_stop & jnp.all((tail == jnp.asarray(seq)) & (index >= 0), axis=1)
  return done


# -- the loops -----------------------------------------------------------------

def _sample_loop(model, params, tokens, lengths, settings, key, record_logits, cond):
  logits0, state = incremental.prefill(model, params, tokens, lengths, cond)
  rows = jnp.arange(tokens.shape[0])
  first = logits0[rows, lengths]
  trace = jnp.zeros((tokens.shape[0], settings.max_new if record_logits else 0, first.shape[-1]))
  seen = seen_tokens(tokens, lengths, first.shape[-1])

  def cond(carry):
    i, done = carry[0], carry[4]
    return (i < settings.max_new) & ~jnp.all(done)

  def body(carry):
    i, state, logits, buf, done, key, trace, seen = carry
    key, sub = jax.random.split(key)
    if record_logits:
      trace = trace.at[:, i].set(logits)
    pos = lengths + i
    token = pick(process(logits, buf, pos, seen, i, settings), sub, settings).astype(jnp.int32)
    token = jnp.where(done, PAD, token)
    buf = buf.at[rows, pos].set(token)
    seen = seen.at[rows, token].set(True)
    done = done | stopped(buf, pos, token, i, settings)
    logits, state = incremental.step(model, params, state, token)
    return i + 1, state, logits, buf, done, key, trace, seen

  carry = (jnp.int32(0), state, first, tokens, jnp.zeros(lengths.shape, bool), key, trace, seen)
  _, _, _, buf, _, _, trace, _ = jax.lax.while_loop(cond, body, carry)
  return buf, trace


def _beam_loop(model, params, tokens, lengths, settings, cond):
  """Beam search: each row keeps `beam_size` hypotheses ranked by their sum of
  log-probabilities; a finished one extends only by PAD (at no cost) and keeps its
  slot. Every per-hypothesis array (the generator's caches, the buffer, the seen
  ids) follows its hypothesis when the beams are re-ranked. The result is the
  hypothesis of highest score / ((5 + n) / 6) ** length_penalty (GNMT), n its new
  tokens counting the one that stopped it."""
  b, k = tokens.shape[0], settings.beam_size
  logits0, state = incremental.prefill(model, params, tokens, lengths, cond)
  widen = lambda x: jnp.repeat(x, k, axis=0)                  # [B, ...] -> [B*K, ...]
  state, buf, lens = jax.tree.map(widen, state), widen(tokens), widen(lengths)
  logits = widen(logits0[jnp.arange(b), lengths])
  seen = seen_tokens(buf, lens, logits.shape[-1])
  scores = jnp.tile(jnp.asarray([0.0] + [NEG] * (k - 1)), (b, 1))   # [B, K]
  rows = jnp.arange(b * k)

  def cond(carry):
    i, done = carry[0], carry[4]
    return (i < settings.max_new) & ~jnp.all(done)

  def body(carry):
    i, state, logits, buf, done, scores, new_len, seen = carry
    pos = lens + i
    logp = jax.nn.log_softmax(process(logits, buf, pos, seen, i, settings))
    vocab = logp.shape[-1]
    finished = jnp.where(jnp.arange(vocab) == PAD, 0.0, NEG)    # done beams only extend by PAD
    logp = jnp.where(done[:, None], finished, logp)
    cand = (scores[..., None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
    scores, flat = jax.lax.top_k(cand, k)                       # [B, K]
    src = (jnp.arange(b)[:, None] * k + flat // vocab).reshape(-1)
    token = (flat % vocab).reshape(-1).astype(jnp.int32)
    state, buf, done, new_len, seen = jax.tree.map(
        lambda x: x[src], (state, buf, done, new_len, seen))
    buf = buf.at[rows, pos].set(token)
    seen = seen.at[rows, token].set(True)
    new_len = jnp.where(done, new_len, i + 1)
    done = done | stopped(buf, pos, token, i, settings)
    logits, state = incremental.step(model, params, state, token)
    return i + 1, state, logits, buf, done, scores, new_len, seen

  carry = (jnp.int32(0), state, logits, buf, jnp.zeros((b * k,), bool), scores,
           jnp.zeros((b * k,), jnp.int32), seen)
  _, _, _, buf, _, scores, new_len, _ = jax.lax.while_loop(cond, body, carry)
  penalty = ((5.0 + new_len.reshape(b, k)) / 6.0) ** settings.length_penalty
  best = jnp.argmax(scores / penalty, axis=1)
  return buf.reshape(b, k, -1)[jnp.arange(b), best]


@functools.partial(jax.jit, static_argnames=("model", "settings", "record_logits"))
def generate(model: LM, params, tokens, lengths, key, settings: DecodeSettings,
             record_logits: bool = False, cond=None):
  """tokens [B, S] (prompts right-padded), lengths [B] -> (buffer [B, S] with the new
  tokens after each prompt and PAD after a row stops, logits [B, max_new, V] of
  each step when `record_logits` (sampling strategies only), else None). `cond`:
  a conditioned model's inputs, one row per prompt (LM.encode); the memory's
  keys and values are computed once, at prefill."""
  if settings.strategy == "beam":
    return _beam_loop(model, params, tokens, lengths, settings, cond), None
  buf, trace = _sample_loop(model, params, tokens, lengths, settings, key, record_logits, cond)
  return buf, (trace if record_logits else None)


def new_text(buffer, lengths, tokenizer_decode) -> list[str]:
  """The generated part of each row, as text (PAD after a stop is dropped)."""
  buffer, lengths = np.asarray(buffer), np.asarray(lengths)
  return [tokenizer_decode(row[n:]) for row, n in zip(buffer, lengths)]
