"""Sampling from the model.

For now plain temperature sampling that re-runs the model over the whole
buffer at every step (no KV cache): correct for every model, quadratic in
length. The cached composed generator replaces it (issue: composed generator
at inference).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mgm.data.tokenizer import PAD, encode


def pack_prompts(prompts: list[str], total_len: int):
  """Prompts -> ([B, total_len] int32 buffer right-padded with PAD, [B] lengths)."""
  encoded = [encode(p) for p in prompts]
  longest = max((len(e) for e in encoded), default=0)
  if longest >= total_len:
    raise ValueError(f"config field `sample.prompt`: a prompt of {longest} bytes leaves "
                     f"no room in a buffer of {total_len}; shorten it or raise "
                     "`sample.max_new_tokens`")
  buf = np.full((len(prompts), total_len), PAD, np.int32)
  for i, e in enumerate(encoded):
    buf[i, :len(e)] = e
  return jnp.asarray(buf), jnp.asarray([len(e) for e in encoded], jnp.int32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_new"))
def sample_recompute(apply_fn, params, buffer, lengths, rng, temperature, num_new: int):
  """Write `num_new` tokens after each prompt. buffer: [B, L], lengths: [B]."""

  def step(i, carry):
    buf, key = carry
    key, sub = jax.random.split(key)
    logits = apply_fn({"params": params}, buf)                  # [B, L, V]
    pos = lengths + i                                            # next position to fill
    next_logits = jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]
    next_tok = jax.random.categorical(sub, next_logits / jnp.maximum(temperature, 1e-6))
    next_tok = jnp.where(temperature > 0, next_tok, jnp.argmax(next_logits, -1))
    buf = buf.at[jnp.arange(buf.shape[0]), pos].set(next_tok.astype(buf.dtype))
    return buf, key

  buf, _ = jax.lax.fori_loop(0, num_new, step, (buffer, rng))
  return buf
