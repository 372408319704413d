"""Causal multi-head self-attention with RoPE and optional qk-norm, and the
attention kernels the span kinds run (mgm/nn/span.py: full, parent, window).

Packed documents (`doc_ids` [B, T], one id per document): every span is also
restricted to the query's document, so documents packed in one row do not see
each other (data.packing=document_mask). The restriction is a mask on the XLA
paths. cuDNN's fused kernel, as jax exposes it, takes no segment ids, so on a
GPU a full causal span with documents runs jax's Pallas (Triton) flash
attention with segment ids instead (`segment_flash_attention`).

Full causal spans run as one fused kernel where one exists: `attention_impl`
'auto' picks cuDNN's flash attention on NVIDIA GPUs in bfloat16/float16 (memory
O(T), not O(T^2)), blockwise causal attention on CPU (query blocks attend to
the keys up to their own block only: the masked upper blocks are never
computed) and XLA's dense attention elsewhere; 'xla', 'cudnn' and 'blockwise'
force one.
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental.pallas.ops.gpu import attention as pallas_attention
from jax.sharding import PartitionSpec as P

from mgm.nn.layers import Dtype, Linear, RMSNorm


def rope(x, positions, base: float):
  """Rotary embedding. x: [B, T, N, H], positions: [B, T] (int)."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)      # [H/2]
  angle = positions[..., None].astype(jnp.float32) * freq            # [B, T, H/2]
  cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


QUERY_CHUNK = 2048
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blockwise")
BLOCK = 128          # queries per block of blockwise_causal_attention (at least)
MAX_BLOCKS = 16      # ...and at most this many blocks (the loop is unrolled)


def fused_impl(impl: str, dtype) -> str:
  """'cudnn', 'blockwise' or 'xla': what a full causal span runs with under
  `impl`. 'auto': cuDNN on NVIDIA GPUs in bfloat16/float16, blockwise on CPU
  (a flat train step 1024 bytes x 8 ran in about half the time there:
  benchmarks/results/attention_cpu.md), XLA's dense kernel elsewhere."""
  if impl == "auto":
    backend = jax.default_backend()
    if backend == "cpu":
      return "blockwise"
    return "cudnn" if backend == "gpu" and dtype in (jnp.bfloat16, jnp.float16) else "xla"
  return impl


def full_attention(q, k, v, impl: str = "auto", doc_ids=None):
  """Full causal attention [B, T, N, H] -> [B, T, N, H]: blockwise where `impl`
  picks it; else, where `impl` picks cuDNN, cuDNN's fused kernel without
  documents and the Pallas flash kernel with them (segment_flash_attention;
  T a multiple of FLASH_BLOCK); else chunked queries for long sequences,
  otherwise one XLA block; `doc_ids` [B, T] keeps queries in their document."""
  kernel = fused_impl(impl, q.dtype)
  if kernel == "blockwise":
    return blockwise_causal_attention(q, k, v, doc_ids=doc_ids)
  long = q.shape[1] > QUERY_CHUNK and q.shape[1] % QUERY_CHUNK == 0
  if doc_ids is not None and kernel == "cudnn":
    if q.shape[1] % FLASH_BLOCK == 0:
      return segment_flash_attention(q, k, v, doc_ids)
    logging.log_first_n(logging.WARNING, "full attention over %d positions with documents "
                        "runs XLA's masked O(T^2) kernel: the flash kernel with segment ids "
                        "needs a multiple of %d", 4, q.shape[1], FLASH_BLOCK)
  if doc_ids is not None:
    if long:
      return chunked_causal_attention(q, k, v, QUERY_CHUNK, doc_ids=doc_ids)
    return masked_attention(q, k, v, doc_ids)
  if kernel == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  if long:
    return chunked_causal_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


FLASH_BLOCK = 128    # query and key block of segment_flash_attention's forward kernel


def segment_flash_attention(q, k, v, segment_ids, interpret: bool = False):
  """Causal flash attention within segments (FlashAttention, Dao et al. 2022,
  §3: tiled online softmax, O(T) memory; keys of another segment are masked per
  tile): q, k, v [B, T, N, H], segment_ids [B, T] int -> [B, T, N, H]. Runs
  jax's Pallas Triton kernel (jax.experimental.pallas.ops.gpu.attention.mha,
  NVIDIA GPUs; `interpret=True` runs the same kernel on any backend, for
  tests). T must be a multiple of FLASH_BLOCK (ValueError otherwise).

  Under a mesh (jax.set_mesh) the kernel runs per shard through shard_map: rows
  and heads split as the logical rules place ('batch', 'heads'); a rule that
  splits the sequence or the head dimension is refused (ValueError), since a
  shard would then miss keys."""
  if q.shape[1] % FLASH_BLOCK:
    raise ValueError(f"segment_flash_attention needs T a multiple of {FLASH_BLOCK}, "
                     f"got T={q.shape[1]}")
  kernel = functools.partial(pallas_attention.mha, sm_scale=1.0 / math.sqrt(q.shape[-1]),
                             causal=True, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, segment_ids)
  batch, length, heads, kv = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
  if length is not None or kv is not None:
    raise ValueError("segment_flash_attention runs per shard of rows and heads; the mesh "
                     f"rules split the sequence ({length}) or head dimension ({kv})")
  rows = P(batch, None, heads, None)
  return jax.shard_map(kernel, in_specs=(rows, rows, rows, P(batch, None)),
                       out_specs=rows, check_vma=False)(q, k, v, segment_ids)


def masked_attention(q, k, v, ids):
  """Causal attention where query t sees keys with its own id: ids [B, T]."""
  mask = (ids[:, :, None] == ids[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)


def local_attention(q, k, v, window: int, unit_ids=None):
  """Causal attention where query t sees keys (t-window, t], of its own unit if
  `unit_ids` [B, T] is given. q, k, v: [B, T, N, H] -> [B, T, N, H].

  Blockwise: blocks of `window` queries attend to their block and the previous
  one, so the cost is T x 2*window instead of T x T.
  """
  b, t, n, h = q.shape
  c = window
  pad = -t % c
  if pad:
    padder = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    q, k, v = padder(q), padder(k), padder(v)
    unit_ids = None if unit_ids is None else padder(unit_ids)
  nb = (t + pad) // c
  blocks = lambda x: x.reshape(b, nb, c, *x.shape[2:])
  with_prev = lambda x: jnp.concatenate(
      [jnp.pad(x, ((0, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2))[:, :-1], x], axis=2)
  qb, kb, vb = blocks(q), with_prev(blocks(k)), with_prev(blocks(v))   # kb: [B, nb, 2c, N, H]
  q_pos = jnp.arange(nb)[:, None] * c + jnp.arange(c)                  # [nb, c]
  k_pos = jnp.arange(nb)[:, None] * c + jnp.arange(-c, c)              # [nb, 2c]
  delta = q_pos[:, :, None] - k_pos[:, None, :]                        # [nb, c, 2c]
  mask = ((delta >= 0) & (delta < window) & (k_pos[:, None, :] >= 0))[None]
  if unit_ids is not None:
    ub = blocks(unit_ids)
    mask = mask & (ub[..., :, None] == with_prev(ub)[..., None, :])     # [B, nb, c, 2c]
  scores = jnp.einsum("bkqnh,bksnh->bknqs", qb, kb) / jnp.sqrt(h).astype(q.dtype)
  scores = jnp.where(mask[:, :, None], scores.astype(jnp.float32), -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bknqs,bksnh->bkqnh", probs, vb)
  return out.reshape(b, nb * c, n, h)[:, :t]


def block_size(t: int) -> int:
  """Queries per block of blockwise_causal_attention over `t` positions: BLOCK,
  or more so that there are at most MAX_BLOCKS blocks."""
  return max(BLOCK, math.ceil(t / MAX_BLOCKS))


def blockwise_causal_attention(q, k, v, block: int | None = None, doc_ids=None):
  """Full causal attention [B, T, N, H] -> [B, T, N, H] that skips the masked
  upper blocks: queries [s, e) (blocks of `block`, default `block_size(T)`; the
  last one holds what is left, so any T runs without padding) attend to keys
  [0, e) only, with a causal mask of [e - s, e] (and, given `doc_ids` [B, T],
  the document mask) built per block, never [T, T]. Scores and softmax in
  float32. Scores computed: sum_i (e_i - s_i) e_i ~ T (T + block) / 2 per head
  instead of T^2. Beyond QUERY_CHUNK positions each block is recomputed in the
  backward pass (memory O(block x T) per block, as chunked_causal_attention)."""
  b, t, n, h = q.shape
  block = block or block_size(t)
  scale = 1.0 / math.sqrt(h)

  def one_block(start, q_block, keys, values, q_ids, k_ids):
    stop = keys.shape[1]
    scores = jnp.einsum("bqnh,bknh->bnqk", q_block, keys).astype(jnp.float32) * scale
    mask = jnp.arange(stop)[None, :] <= start + jnp.arange(q_block.shape[1])[:, None]
    if q_ids is not None:
      mask = mask & (q_ids[:, None, :, None] == k_ids[:, None, None, :])   # [B, 1, c, e]
    probs = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1).astype(v.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probs, values)

  if t > QUERY_CHUNK:
    one_block = jax.checkpoint(one_block, static_argnums=(0,))
  outs = []
  for start in range(0, t, block):
    stop = min(start + block, t)
    ids = (None, None) if doc_ids is None else (doc_ids[:, start:stop], doc_ids[:, :stop])
    outs.append(one_block(start, q[:, start:stop], k[:, :stop], v[:, :stop], *ids))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def chunked_causal_attention(q, k, v, chunk: int = QUERY_CHUNK, doc_ids=None):
  """Full causal attention, queries in chunks, each recomputed in the backward
  pass: memory O(chunk x T) instead of O(T x T) (long flat sequences); with
  `doc_ids` [B, T], within the query's document only."""
  b, t, n, h = q.shape
  starts = jnp.arange(0, t, chunk)
  ids = jnp.zeros((b, t), jnp.int32) if doc_ids is None else doc_ids

  @jax.checkpoint
  def one_chunk(args):
    start, q_chunk, q_ids = args
    q_pos = start + jnp.arange(chunk)
    mask = (q_pos[:, None] >= jnp.arange(t)[None])[None, None]      # [1, 1, c, T]
    mask = mask & (q_ids[:, :, None] == ids[:, None, :])[:, None]   # [B, 1, c, T]
    return jax.nn.dot_product_attention(q_chunk, k, v, mask=mask)

  q_chunks = q.reshape(b, t // chunk, chunk, n, h).swapaxes(0, 1)     # [T/c, B, c, N, H]
  id_chunks = ids.reshape(b, t // chunk, chunk).swapaxes(0, 1)         # [T/c, B, c]
  out = jax.lax.map(one_chunk, (starts, q_chunks, id_chunks))
  return out.swapaxes(0, 1).reshape(b, t, n, h)


class SelfAttention(nn.Module):
  width: int
  heads: int
  span: Any = None                 # a Span kind (mgm/nn/span.py); None: full
  rope_base: float = 10_000.0
  qk_norm: bool = False
  dtype: Dtype = jnp.float32

  unit_window: int | None = None   # longest unit, for span='parent' with unit_ids
  attention_impl: str = "auto"     # auto | xla | cudnn | blockwise (full causal spans)

  @nn.compact
  def __call__(self, x, positions, unit_ids=None, doc_ids=None, cache=None, index=None,
               key_mask=None):
    """x: [B, T, D], positions: [B, T] -> [B, T, D]; `doc_ids` [B, T]: see `attend`.

    Teacher-forced, it also sows its keys and values ('intermediates'/'cache') for
    the decoder's prefill. Incremental (`cache` = {'k', 'v'}: [B, N, S, H], see
    step_layout), x is one step [B, 1, D]: its key and value are written at slot
    `index` [B] and the query attends to the slots `key_mask` gives (see
    cached_attention); returns (out, cache).
    """
    head_dim = self.width // self.heads
    proj = lambda name: Linear((self.width, self.heads, head_dim), ("embed", "heads", "kv"),
                               dtype=self.dtype, name=name)(x)         # btd,dnh->btnh
    q, k, v = proj("query"), proj("key"), proj("value")       # [B, T, N, H]
    if self.qk_norm:
      q = RMSNorm("kv", self.dtype, name="query_norm")(q)
      k = RMSNorm("kv", self.dtype, name="key_norm")(k)
    q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
    if cache is None:
      self.sow("intermediates", "cache", {"k": k, "v": v})   # the decoder's prefill
      if self.span is None:
        out = full_attention(q, k, v, self.attention_impl, doc_ids)
      else:
        out = self.span.attend(q, k, v, unit_ids=unit_ids, unit_window=self.unit_window,
                               impl=self.attention_impl, doc_ids=doc_ids)
    else:
      cache, out = cached_attention(q, k, v, cache, index, key_mask)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    out = Linear((self.heads, head_dim, self.width),                    # btnh,nhd->btd
                 ("heads", "kv", "embed"), fan_in_axes=(0, 1), dtype=self.dtype,
                 name="out")(out)
    return out if cache is None else (out, cache)


def cached_attention(q, k, v, cache, index, key_mask):
  """One query step against a KV cache. q, k, v: [B, 1, N, H]; cache k, v:
  [B, N, S, H] (heads before slots, `step_layout`).

  The step's key and value are written at slot `index` [B] (an index >= S
  writes nothing: a row that is not stepping). `key_mask` is (start [B], mask
  [B, W]): the query attends to slots start..start+W-1 where `mask` is set, so
  a local span reads W slots, not S.
  """
  rows = jnp.arange(q.shape[0])
  write = lambda c, x: c.at[rows, :, index].set(x[:, 0].astype(c.dtype), mode="drop")
  cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
  start, mask = key_mask
  keys, values = cache["k"], cache["v"]
  if mask.shape[1] < keys.shape[2]:
    slots = (start[:, None] + jnp.arange(mask.shape[1]))[:, None, :, None]   # [B, 1, W, 1]
    keys = jnp.take_along_axis(keys, slots, axis=2)
    values = jnp.take_along_axis(values, slots, axis=2)
  scores = jnp.einsum("bqnh,bnsh->bnqs", q, keys) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  scores = jnp.where(mask[:, None, None, :], scores.astype(jnp.float32), -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return cache, jnp.einsum("bnqs,bnsh->bqnh", probs, values)


def step_layout(cache):
  """The sown cache (k, v: [B, S, N, H], as the teacher-forced pass makes them)
  -> the layout `cached_attention` steps on, [B, N, S, H]. With the slots next
  to the head dimension, each head's keys and values are one contiguous [S, H]
  matrix: the step's two batched matmuls (batch B x N) read the cache in place.
  In [B, S, N, H], XLA on CPU copied every cache to a transposed layout at every
  step (benchmarks/results/generate_batch_scaling.md)."""
  return {"k": cache["k"].swapaxes(1, 2), "v": cache["v"].swapaxes(1, 2)}
