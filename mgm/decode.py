"""Decoding with the composed generator (mgm/model/incremental.py).

Strategies: greedy, sample (temperature, top-k, top-p), beam (length penalty).
Constraints: min/max new tokens, banned tokens, a forced prefix, stop
sequences, EOS. Prompts of different lengths are prefilled in one forward
pass; the decode loop is one jitted `lax.while_loop` with static shapes.
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
class DecodeSpec:
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


def from_config(sample_cfg, vocab_size: int = VOCAB_SIZE) -> DecodeSpec:
  c = sample_cfg
  if c.strategy not in STRATEGIES:
    raise ConfigError("sample.strategy", f"unknown strategy {c.strategy!r}; one of {STRATEGIES}")
  spec = DecodeSpec(
      strategy=c.strategy, max_new=c.max_new_tokens, min_new=c.min_new_tokens,
      temperature=float(c.temperature), top_k=c.top_k, top_p=float(c.top_p),
      beam_size=c.beam_size, length_penalty=float(c.length_penalty),
      banned=tuple(sorted(set(encode(c.banned).tolist()))),
      stop=tuple(tuple(encode(s).tolist()) for s in c.stop if s),
      forced=tuple(encode(c.forced_prefix).tolist()), stop_at_eos=bool(c.stop_at_eos))
  check(spec, vocab_size)
  return spec


def check(spec: DecodeSpec, vocab_size: int):
  """Contradictory or impossible constraints -> ConfigError naming the field."""
  if spec.max_new <= 0:
    raise ConfigError("sample.max_new_tokens", f"must be positive, got {spec.max_new}")
  if not 0 <= spec.min_new <= spec.max_new:
    raise ConfigError("sample.min_new_tokens", f"{spec.min_new} must lie in [0, "
                      f"sample.max_new_tokens={spec.max_new}]")
  if spec.beam_size < 1 or spec.beam_size > vocab_size:
    raise ConfigError("sample.beam_size", f"{spec.beam_size} must lie in [1, vocabulary "
                      f"size {vocab_size}]")
  if spec.top_k < 0 or spec.top_k > vocab_size:
    raise ConfigError("sample.top_k", f"{spec.top_k} must lie in [0, {vocab_size}] (0 = off)")
  if not 0.0 < spec.top_p <= 1.0:
    raise ConfigError("sample.top_p", f"{spec.top_p} must lie in (0, 1] (1 = off)")
  if spec.temperature < 0:
    raise ConfigError("sample.temperature", f"{spec.temperature} must be >= 0 (0 = greedy)")
  if len(spec.forced) > spec.max_new:
    raise ConfigError("sample.forced_prefix", f"is {len(spec.forced)} bytes, longer than "
                      f"sample.max_new_tokens={spec.max_new}")
  clash = set(spec.forced) & set(spec.banned)
  if clash:
    raise ConfigError("sample.forced_prefix", f"contains banned bytes {sorted(clash)} "
                      "(sample.banned); the constraints contradict each other")
  if len(spec.banned) >= 256 and not spec.stop_at_eos:
    raise ConfigError("sample.banned", "bans every byte; nothing can be generated")


def pack_prompts(prompts: list[str], spec: DecodeSpec, model: LM, max_len: int):
  """Prompts -> (tokens [B, S] right-padded with PAD, lengths [B]); see pack_tokens."""
  return pack_tokens([encode(p) for p in prompts], spec, model, max_len)


def pack_tokens(prompts: list, spec: DecodeSpec, model: LM, max_len: int):
  """Token prompts -> (tokens [B, S] right-padded with PAD, lengths [B]); S holds
  prompt + max_new and is a multiple of every fixed patch, so the fixed levels stay static."""
  longest = max(len(e) for e in prompts)
  if longest + spec.max_new > max_len:
    field = "sample.prompt" if longest >= max_len else "sample.max_new_tokens"
    raise ConfigError(field, f"a prompt of {longest} bytes plus {spec.max_new} new tokens "
                      f"exceeds the model's length {max_len} (data.seq_len); shorten one")
  patch = math.lcm(1, *[segment.fixed_patch(model.spec.levels[:-1], i) or 1
                        for i in range(len(model.spec.levels) - 1)])
  size = -(-(longest + spec.max_new + 1) // patch) * patch
  buf = np.full((len(prompts), size), PAD, np.int32)
  for i, e in enumerate(prompts):
    buf[i, :len(e)] = e
  return jnp.asarray(buf), jnp.asarray([len(e) for e in prompts], jnp.int32)


# -- logits processing ---------------------------------------------------------

def constrain(logits, i, spec: DecodeSpec):
  """Apply banned tokens, min length and the forced prefix at new-token index i."""
  vocab = jnp.arange(logits.shape[-1])
  banned = jnp.isin(vocab, jnp.asarray(spec.banned + (256, 257), jnp.int32))  # PAD, BOS
  banned |= (vocab == EOS) & ((i < spec.min_new) | (not spec.stop_at_eos))
  logits = jnp.where(banned, NEG, logits)
  if spec.forced:
    forced = jnp.asarray(spec.forced, jnp.int32)[jnp.minimum(i, len(spec.forced) - 1)]
    logits = jnp.where((i < len(spec.forced)) & (vocab != forced), NEG, logits)
  return logits


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


def pick(logits, key, spec: DecodeSpec):
  if spec.strategy == "greedy" or spec.temperature == 0:
    return jnp.argmax(logits, axis=-1)
  logits = nucleus(logits / spec.temperature, spec.top_k, spec.top_p)
  return jax.random.categorical(key, logits)


def stopped(buffer, pos, token, i, spec: DecodeSpec):
  """Does a row end after writing `token` at pos [B] (its i-th new token)?"""
  done = jnp.full(token.shape, i + 1 >= spec.max_new)
  may_stop = i + 1 >= spec.min_new
  if spec.stop_at_eos:
    done |= may_stop & (token == EOS)
  for seq in spec.stop:
    k = len(seq)
    index = pos[:, None] - k + 1 + jnp.arange(k)
    tail = jnp.take_along_axis(buffer, jnp.clip(index, 0), axis=1)
    done |= may_stop & jnp.all((tail == jnp.asarray(seq)) & (index >= 0), axis=1)
  return done


# -- the loops -----------------------------------------------------------------

def _sample_loop(model, params, tokens, lengths, spec, key, record_logits):
  logits0, state = incremental.prefill(model, params, tokens, lengths)
  rows = jnp.arange(tokens.shape[0])
  first = logits0[rows, lengths]
  trace = jnp.zeros((tokens.shape[0], spec.max_new if record_logits else 0, first.shape[-1]))

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < spec.max_new) & ~jnp.all(done)

  def body(carry):
    i, state, logits, buf, done, key, trace = carry
    key, sub = jax.random.split(key)
    if record_logits:
      trace = trace.at[:, i].set(logits)
    token = pick(constrain(logits, i, spec), sub, spec).astype(jnp.int32)
    token = jnp.where(done, PAD, token)
    pos = lengths + i
    buf = buf.at[rows, pos].set(token)
    done = done | stopped(buf, pos, token, i, spec)
    logits, state = incremental.step(model, params, state, token)
    return i + 1, state, logits, buf, done, key, trace

  carry = (jnp.int32(0), state, first, tokens, jnp.zeros(lengths.shape, bool), key, trace)
  i, _, _, buf, _, _, trace = jax.lax.while_loop(cond, body, carry)
  return buf, trace


def _beam_loop(model, params, tokens, lengths, spec):
  b, k = tokens.shape[0], spec.beam_size
  logits0, state = incremental.prefill(model, params, tokens, lengths)
  widen = lambda x: jnp.repeat(x, k, axis=0)                  # [B, ...] -> [B*K, ...]
  state, buf, lens = jax.tree.map(widen, state), widen(tokens), widen(lengths)
  logits = widen(logits0[jnp.arange(b), lengths])
  scores = jnp.tile(jnp.asarray([0.0] + [NEG] * (k - 1)), (b, 1))   # [B, K]
  rows = jnp.arange(b * k)

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < spec.max_new) & ~jnp.all(done)

  def body(carry):
    i, state, logits, buf, done, scores, new_len = carry
    logp = jax.nn.log_softmax(constrain(logits, i, spec))
    vocab = logp.shape[-1]
    finished = jnp.where(jnp.arange(vocab) == PAD, 0.0, NEG)    # done beams only extend by PAD
    logp = jnp.where(done[:, None], finished, logp)
    cand = (scores[..., None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
    scores, flat = jax.lax.top_k(cand, k)                       # [B, K]
    src = (jnp.arange(b)[:, None] * k + flat // vocab).reshape(-1)
    token = (flat % vocab).reshape(-1).astype(jnp.int32)
    state, buf, done, new_len = jax.tree.map(lambda x: x[src], (state, buf, done, new_len))
    pos = lens + i
    buf = buf.at[rows, pos].set(token)
    new_len = jnp.where(done, new_len, i + 1)
    done = done | stopped(buf, pos, token, i, spec)
    logits, state = incremental.step(model, params, state, token)
    return i + 1, state, logits, buf, done, scores, new_len

  carry = (jnp.int32(0), state, logits, buf, jnp.zeros((b * k,), bool), scores,
           jnp.zeros((b * k,), jnp.int32))
  _, _, _, buf, _, scores, new_len = jax.lax.while_loop(cond, body, carry)
  penalty = ((5.0 + new_len.reshape(b, k)) / 6.0) ** spec.length_penalty
  best = jnp.argmax(scores / penalty, axis=1)
  return buf.reshape(b, k, -1)[jnp.arange(b), best]


@functools.partial(jax.jit, static_argnames=("model", "spec", "record_logits"))
def generate(model: LM, params, tokens, lengths, key, spec: DecodeSpec,
             record_logits: bool = False):
  """tokens [B, S] (prompts right-padded), lengths [B] -> (buffer [B, S] with the new
  tokens after each prompt and PAD after a row stops, logits [B, max_new, V] of
  each step when `record_logits` (sampling strategies only), else None)."""
  if spec.strategy == "beam":
    return _beam_loop(model, params, tokens, lengths, spec), None
  buf, trace = _sample_loop(model, params, tokens, lengths, spec, key, record_logits)
  return buf, (trace if record_logits else None)


def new_text(buffer, lengths, tokenizer_decode) -> list[str]:
  """The generated part of each row, as text (PAD after a stop is dropped)."""
  buffer, lengths = np.asarray(buffer), np.asarray(lengths)
  return [tokenizer_decode(row[n:]) for row, n in zip(buffer, lengths)]
