"""Multi-head cross-attention from a decoder level into the fused memory.

The encoder-decoder attention of Vaswani et al. 2017 (§3.2.3): queries from
the level's positions, keys and values from the memory [B, M, D_m] that the
encoders and the fusion made (mgm/nn/encoders.py, mgm/nn/fusion.py); a key
padding mask [B, M] hides padded memory slots; a row with no real slot gets
a zero output (no memory, no contribution). There is no causal mask and no
rotary position: the memory carries its own positions, and every position of
the level may read all of it (it is the condition, not the future).

A memory is a dict, one of:
  {"x": [B, M, D_m], "mask": [B, M] bool}           teacher-forced: the keys and
      values are projected here (and sown as 'intermediates'/'cross' for the
      decoder's prefill);
  {"k": [B, M, N, H], "v": [B, M, N, H], "mask": [B, M]}   the decoder's steps:
      projected once at prefill and reused (mgm/model/incremental.py).

Queries may come in groups of rows: a level that runs on fixed patches
reshapes [B, T, D] to [B*T/P, P, D]; its queries are folded back to [B, T]
rows so every patch reads its own row's memory without copying it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.nn.layers import Dtype, Linear, RMSNorm


class CrossAttention(nn.Module):
  width: int
  heads: int
  qk_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory: dict):
    """x: [B*G, T, D] (G query groups per memory row) -> [B*G, T, D]."""
    head_dim = self.width // self.heads
    proj = lambda name, y: Linear((y.shape[-1], self.heads, head_dim),
                                  ("embed", "heads", "kv"), dtype=self.dtype,
                                  name=name)(y)                    # bmd,dnh->bmnh
    q = proj("query", x)                                           # [B*G, T, N, H]
    if "k" in memory:
      k, v = memory["k"], memory["v"]
    else:
      k, v = proj("key", memory["x"]), proj("value", memory["x"])  # [B, M, N, H]
      if self.qk_norm:
        k = RMSNorm("kv", self.dtype, name="key_norm")(k)
      self.sow("intermediates", "cross", {"k": k, "v": v})
    if self.qk_norm:
      q = RMSNorm("kv", self.dtype, name="query_norm")(q)
    rows, groups = k.shape[0], x.shape[0] // k.shape[0]
    q = q.reshape(rows, groups * x.shape[1], self.heads, head_dim)  # [B, G*T, N, H]
    mask = memory["mask"][:, None, None, :]                          # [B, 1, 1, M]
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
    # A row whose memory is all masked (a mixture row whose task has no input) reads
    # nothing: softmax over no key would average the values; its contribution is 0.
    out = jnp.where(jnp.any(mask, -1, keepdims=True), out, 0).astype(out.dtype)
    out = out.reshape(x.shape[0], x.shape[1], self.heads, head_dim)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Linear((self.heads, head_dim, self.width), ("heads", "kv", "embed"),
                  fan_in_axes=(0, 1), dtype=self.dtype, name="out")(out)   # btnh,nhd->btd


def flops_per_query(width: int, memory_len: int) -> float:
  """Forward FLOPs of one query position: q and out projections, scores and values."""
  return 2 * 2 * width * width + 2 * 2 * memory_len * width


def flops_per_memory(width: int, memory_width: int, memory_len: int) -> float:
  """Forward FLOPs of the keys and values of one memory (once per sequence)."""
  return 2 * 2 * memory_len * memory_width * width
