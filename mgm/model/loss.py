"""Token cross-entropy from the final hidden states a chunk of positions at a
time, so the [B, T, V] logits are never held at once (issue 16;
`model.loss_chunk`).

The full path (mgm/model/lm.py `token_loss`) projects every position to
logits [B, T, V] float32 and keeps them (and their softmax) for the backward
pass. Here the projection, logsumexp and target logit run in a scan over
chunks of C positions, each under `jax.checkpoint`: the forward keeps only
per-token numbers, and the backward recomputes one chunk's logits at a time,
so the loss holds [B, C, V] instead of [B, T, V]. The same arithmetic as the
full path (the projection in the compute dtype, logits in float32), so values
and gradients agree to float rounding.
"""
import jax
import jax.numpy as jnp


def chunked_token_ce(h, kernel, tokens, chunk: int, dtype=jnp.float32):
  """Per-token cross-entropy of logits = h @ kernel, `chunk` positions at a time.

  h: [B, T, D] final hidden states (after the final norm); kernel: [D, V] the
  unembedding; tokens: [B, T] int targets; `dtype`: the projection's compute
  dtype (logits are float32). Returns (ce, uniform), each [B, T] float32 in
  nats: ce = logsumexp(logits) - logits[target]; uniform = logsumexp(logits) -
  mean_v(logits), the cross-entropy against the uniform distribution (label
  smoothing s: (1 - s) ce + s uniform). T need not be a multiple of `chunk`:
  the last chunk is padded and its padding dropped (no gradient reaches it).
  """
  b, t, d = h.shape
  pad = -t % chunk
  n = (t + pad) // chunk
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
  tokens = jnp.pad(tokens, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  w = jnp.asarray(kernel, dtype)

  @jax.checkpoint
  def one_chunk(args):
    h_chunk, t_chunk = args                                       # [B, C, D], [B, C]
    logits = (h_chunk.reshape(-1, d).astype(dtype) @ w).astype(jnp.float32)
    logits = logits.reshape(b, chunk, -1)                         # [B, C, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, t_chunk[..., None], axis=-1)[..., 0]
    return lse - target, lse - jnp.mean(logits, axis=-1)

  ce, uniform = jax.lax.map(one_chunk, (h, tokens))               # [n, B, C] each
  unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
  return unchunk(ce), unchunk(uniform)


def masked_mean(x, mask):
  """Mean of x [B, T] over `mask` [B, T] (0 or 1), and the mask's count."""
  count = jnp.sum(mask)
  return jnp.sum(x * mask) / jnp.maximum(count, 1.0), count
