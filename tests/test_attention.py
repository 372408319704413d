"""Every fast attention path computes what plain masked dense attention computes.

`attend` picks, by span and length: blockwise causal attention for full spans
on CPU (impl 'auto' or 'blockwise'); XLA's dense causal attention; query-chunked
causal attention for full spans longer than QUERY_CHUNK (a multiple of it: the
`base` presets' 8,192 bytes); blockwise local attention for `window:W` spans with
W < T and for `parent` spans whose longest unit is shorter than T; a dense
unit-masked pass for shorter `parent` sequences; cuDNN on GPU (compared with XLA
in test_compute.py) and, with documents, Pallas's flash kernel with segment ids
(here in interpret mode; on a GPU in test_compute.py). Each is compared here, in values and gradients, with
`reference` below (scores, an explicit mask, softmax), written independently of
mgm/nn/attention.py, at shapes that take the path (ragged lengths included), and
checked causal by perturbing one key and value.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgm.nn import attention
from mgm.nn.span import SPANS


def attend(q, k, v, span, unit_ids=None, unit_window=None, impl="auto", doc_ids=None):
  """Teacher-forced attention of the span kind `span` names."""
  return SPANS.parse(span).attend(q, k, v, unit_ids=unit_ids, unit_window=unit_window,
                                  impl=impl, doc_ids=doc_ids)

# float32 throughout. Fast minus reference, measured over these cases: <= 3e-7 in
# values (scale ~1), <= 7e-7 in gradients (scale ~4); one wrongly masked key moves
# an output by ~1/(keys seen): ~2e-4 even at 4,096 keys, far more at the others.
ATOL = 2e-5


def qkv(t, b=1, n=2, h=8, seed=0):
  """Random q, k, v: [B, T, N, H]."""
  return tuple(jax.random.normal(key, (b, t, n, h))
               for key in jax.random.split(jax.random.key(seed), 3))


def allowed(t, window=None, unit_ids=None):
  """[B or 1, T, T] bool: query i may see key j."""
  i, j = np.arange(t)[:, None], np.arange(t)[None]
  mask = (j <= i) & ((i - j < window) if window else True)
  mask = mask[None]
  if unit_ids is not None:
    unit_ids = np.asarray(unit_ids)
    mask = mask & (unit_ids[:, :, None] == unit_ids[:, None, :])
  return jnp.asarray(mask)


def reference(q, k, v, mask):
  """Masked dense softmax attention. q, k, v: [B, T, N, H]; mask [B or 1, T, T]."""
  scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  scores = jnp.where(mask[:, None], scores, -jnp.inf)
  return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores, axis=-1), v)


@jax.jit(static_argnums=0)
def out_and_grads(f, q, k, v, cotangent):
  """f(q, k, v) and its vector-Jacobian product with `cotangent` (d/dq, d/dk, d/dv)."""
  out, pullback = jax.vjp(f, q, k, v)
  return out, pullback(cotangent)


def assert_same_values_and_gradients(fast, slow, q, k, v):
  """fast(q, k, v) == slow(q, k, v), and so are their gradients."""
  cotangent = jax.random.normal(jax.random.key(1), q.shape)
  out_fast, grads_fast = out_and_grads(fast, q, k, v, cotangent)
  out_slow, grads_slow = out_and_grads(slow, q, k, v, cotangent)
  np.testing.assert_allclose(out_fast, out_slow, atol=ATOL, rtol=0)
  for name, g_fast, g_slow in zip("qkv", grads_fast, grads_slow):
    np.testing.assert_allclose(g_fast, g_slow, atol=ATOL, rtol=0, err_msg=f"d/d{name}")


def assert_causal(f, q, k, v, positions):
  """Changing key and value t leaves outputs < t unchanged, and changes output t.
  The perturbations (and the unperturbed input, first) run as one vmapped batch."""
  positions = np.asarray(positions)
  bump = jax.nn.one_hot(positions, q.shape[1])[:, None, :, None, None]     # [P, 1, T, 1, 1]
  bump = jnp.concatenate([jnp.zeros_like(bump[:1]), bump])
  base, *outs = np.asarray(jax.jit(jax.vmap(lambda kk, vv: f(q, kk, vv)))(k + bump, v + bump))
  for out, t in zip(outs, positions):
    # a leak moves outputs by ~1/t of their scale (>= 1e-4 here); rounding, ~1e-7
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6, rtol=0,
                               err_msg=f"key {t} leaked backwards")
    assert np.abs(out[:, t] - base[:, t]).max() > 1e-5, f"key {t} unseen at {t}"


@pytest.fixture
def spy(monkeypatch):
  """Counts calls to attention.<name>, to show a test takes the path it means to."""
  calls = {}

  def install(name):
    real = getattr(attention, name)
    calls[name] = 0

    def counted(*args, **kwargs):
      calls[name] += 1
      return real(*args, **kwargs)
    monkeypatch.setattr(attention, name, counted)
    return calls
  return install


# -- full span, blockwise (impl 'auto' on CPU, or 'blockwise') ----------------------

def doc_ids_of(t, b=2):
  """[B, T] document ids: documents of 3, 9, 1, 6, 13, 3, ... bytes (so document
  starts fall inside, at and across block edges), but row 0 one document if B > 1."""
  row = np.repeat(np.arange(t), np.resize([3, 9, 1, 6, 13], t))[:t]
  return np.stack([np.zeros(t, int) if i == 0 and b > 1 else row for i in range(b)])


@pytest.mark.parametrize("t,block", [
    (32, 8),     # a multiple of the block
    (37, 8),     # ragged: a last block of 5
    (5, 8),      # one block, shorter than the block
    (24, 7),     # ragged, the block not a power of two
])
@pytest.mark.parametrize("docs", [False, True], ids=["one-stream", "doc_ids"])
def test_blockwise_causal_attention_equals_dense_in_values_and_gradients(t, block, docs):
  q, k, v = qkv(t, b=2)
  doc_ids = jnp.asarray(doc_ids_of(t)) if docs else None
  fast = lambda q, k, v: attention.blockwise_causal_attention(q, k, v, block, doc_ids)
  slow = lambda q, k, v: reference(q, k, v, allowed(t, unit_ids=doc_ids))
  assert_same_values_and_gradients(fast, slow, q, k, v)
  if not docs:
    assert_causal(fast, q, k, v, positions=range(1, t))


def test_blockwise_is_what_auto_runs_on_cpu_and_xla_keeps_the_plain_path(spy):
  t = 300   # default blocks: 128, 128, 44
  q, k, v = qkv(t, n=1, h=4)
  doc_ids = jnp.asarray(doc_ids_of(t, b=1))
  calls = spy("blockwise_causal_attention")
  for impl, blockwise in (("auto", jax.default_backend() == "cpu"), ("blockwise", True),
                          ("xla", False)):
    calls["blockwise_causal_attention"] = 0
    out = jax.jit(lambda q, k, v: attend(q, k, v, "full", impl=impl, doc_ids=doc_ids))(q, k, v)
    assert calls["blockwise_causal_attention"] == int(blockwise), impl
    np.testing.assert_allclose(out, reference(q, k, v, allowed(t, unit_ids=doc_ids)),
                               atol=ATOL, rtol=0, err_msg=impl)


def test_blockwise_beyond_query_chunk_recomputes_blocks_and_equals_dense():
  """Past QUERY_CHUNK each block is checkpointed (recomputed in the backward pass):
  values and gradients still equal the dense ones, with documents, ragged T."""
  t = attention.QUERY_CHUNK + 40   # 16 blocks of 131 (the last 77)
  q, k, v = qkv(t, b=1, n=1, h=4)
  doc_ids = jnp.asarray(doc_ids_of(t, b=1) // 50)    # documents of ~300 bytes
  fast = lambda q, k, v: attention.blockwise_causal_attention(q, k, v, doc_ids=doc_ids)
  slow = lambda q, k, v: reference(q, k, v, allowed(t, unit_ids=doc_ids))
  assert_same_values_and_gradients(fast, slow, q, k, v)


# -- full span with documents on a GPU: Pallas flash attention with segment ids ------

def test_segment_flash_attention_equals_dense_in_values_gradients_and_under_a_mesh():
  """The GPU's path for packed documents (cuDNN, as jax exposes it, has no segment
  ids), run here in Pallas's interpret mode: the same kernel, on the CPU. Two
  forward blocks, documents crossing them; then split over a 2x2x2 mesh by rows
  and heads through shard_map, as the logical rules place them."""
  from flax import linen as nn
  from jax.sharding import AxisType
  t = 2 * attention.FLASH_BLOCK
  q, k, v = qkv(t, b=4, n=2, h=8)
  doc_ids = jnp.asarray(doc_ids_of(t, b=4) // 4)
  fast = lambda q, k, v: attention.segment_flash_attention(q, k, v, doc_ids, interpret=True)
  slow = lambda q, k, v: reference(q, k, v, allowed(t, unit_ids=doc_ids))
  assert_same_values_and_gradients(fast, slow, q, k, v)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", ("data", "fsdp")),
                                                  ("heads", "tensor"))):
    sharded = jax.jit(fast)(q, k, v)
    with nn.logical_axis_rules((("length", "data"),)), pytest.raises(ValueError, match="sequence"):
      jax.jit(lambda *a: fast(*a))(q, k, v)   # a new function: traced again
  np.testing.assert_allclose(sharded, fast(q, k, v), atol=ATOL, rtol=0)
  with pytest.raises(ValueError, match="multiple of"):
    attention.segment_flash_attention(q[:, :100], k[:, :100], v[:, :100], doc_ids[:, :100])


# -- full span, query-chunked (T > QUERY_CHUNK, T % QUERY_CHUNK == 0) ---------------

def test_chunked_causal_attention_equals_dense_at_the_real_threshold(spy):
  """attend(span='full') at 2 x QUERY_CHUNK queries takes the chunked path; the
  boundary between the chunks is where a shifted query position shows first."""
  t = 2 * attention.QUERY_CHUNK
  q, k, v = qkv(t, n=1, h=4)
  calls = spy("chunked_causal_attention")
  fast = lambda q, k, v: attend(q, k, v, "full", impl="xla")
  out = jax.jit(fast)(q, k, v)
  assert calls["chunked_causal_attention"] == 1
  np.testing.assert_allclose(out, reference(q, k, v, allowed(t)), atol=ATOL, rtol=0)
  c = attention.QUERY_CHUNK
  assert_causal(fast, q, k, v, positions=[1, c - 1, c, c + 1, t - 1])


@pytest.mark.parametrize("t,chunk", [(32, 8), (48, 16)])
def test_chunked_causal_attention_equals_dense_in_values_and_gradients(t, chunk):
  """Small chunks, so the recomputed (checkpointed) backward is cheap to compare."""
  q, k, v = qkv(t, b=2)
  fast = lambda q, k, v: attention.chunked_causal_attention(q, k, v, chunk=chunk)
  slow = lambda q, k, v: reference(q, k, v, allowed(t))
  assert_same_values_and_gradients(fast, slow, q, k, v)
  assert_causal(fast, q, k, v, positions=range(1, t))


def test_full_span_not_a_multiple_of_the_chunk_stays_dense(spy):
  t = attention.QUERY_CHUNK + 8
  q, k, v = qkv(t, n=1, h=4)
  calls = spy("chunked_causal_attention")
  out = attend(q, k, v, "full", impl="xla")
  assert calls["chunked_causal_attention"] == 0
  np.testing.assert_allclose(out, reference(q, k, v, allowed(t)), atol=ATOL, rtol=0)


# -- window:W, blockwise local attention (W < T) ----------------------------------

@pytest.mark.parametrize("t,window", [
    (16, 4),     # a multiple of the window
    (19, 4),     # ragged: padded last block
    (13, 1),     # each query sees itself only
    (17, 16),    # one full block and one query
])
def test_window_attention_equals_masked_dense(t, window, spy):
  q, k, v = qkv(t, b=2)
  calls = spy("local_attention")
  fast = lambda q, k, v: attend(q, k, v, f"window:{window}")
  slow = lambda q, k, v: reference(q, k, v, allowed(t, window))
  assert_same_values_and_gradients(fast, slow, q, k, v)
  assert calls["local_attention"] > 0
  assert_causal(fast, q, k, v, positions=range(1, t))


@pytest.mark.parametrize("window", [5, 6])
def test_window_attention_sees_exactly_its_window(window):
  """Key t changes outputs t .. t+W-1 and none after (the window's far edge)."""
  t = 20
  q, k, v = qkv(t)
  f = jax.jit(lambda q, k, v: attend(q, k, v, f"window:{window}"))
  base = np.asarray(f(q, k, v))
  for s in (0, 3, 7, 12):
    out = np.asarray(f(q, k.at[:, s].add(1.0), v.at[:, s].add(1.0)))
    changed = np.abs(out - base).max(axis=(0, 2, 3)) > 0          # [T]
    np.testing.assert_array_equal(np.flatnonzero(changed), np.arange(s, min(s + window, t)))


@pytest.mark.parametrize("window", [20, 21, 100])
def test_window_at_least_the_length_is_full_causal(window):
  t = 20
  q, k, v = qkv(t)
  out = attend(q, k, v, f"window:{window}")
  np.testing.assert_allclose(out, reference(q, k, v, allowed(t)), atol=ATOL, rtol=0)


# -- parent span: attention within units of varying sizes --------------------------

def unit_ids_of(*rows):
  """[B, T] unit index from each row's unit lengths."""
  return np.stack([np.repeat(np.arange(len(r)), r) for r in rows])


SHORT = unit_ids_of([1, 5, 2, 7, 3, 1, 4], [7, 7, 1, 1, 3, 4])       # T 23, longest 7
LONG = unit_ids_of([1, 5, 2, 10, 3, 2], [10, 1, 1, 3, 6, 2])         # T 23, longest 10


@pytest.mark.parametrize("unit_ids,unit_window", [
    (SHORT, 7),     # blockwise, ragged (23 = 3 x 7 + 2), units straddle the blocks
    (SHORT, 10),    # blockwise, window longer than every unit
    (LONG, 10),     # a unit as long as the window, across a block boundary
    (LONG, 23),     # one block: the dense unit-masked pass
], ids=["short-7", "short-10", "long-10", "long-23"])
def test_parent_attention_equals_masked_dense(unit_ids, unit_window, spy):
  t = unit_ids.shape[1]
  q, k, v = qkv(t, b=2)
  calls = spy("local_attention")
  fast = lambda q, k, v: attend(q, k, v, "parent", unit_ids, unit_window)
  slow = lambda q, k, v: reference(q, k, v, allowed(t, unit_ids=unit_ids))
  assert_same_values_and_gradients(fast, slow, q, k, v)
  assert (calls["local_attention"] > 0) == (unit_window < t)
  assert_causal(fast, q, k, v, positions=range(1, t))
