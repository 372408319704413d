"""Mixer kinds (`levels[i].mixer`): what carries information along a level's
sequence in each block, before the block's MLP (the level's generator G_l is
`depth` such blocks, DESIGN §1).

  attention  causal multi-head self-attention over the level's span
             (mgm/nn/attention.py), the Transformer's
  lstm, gru  a recurrent layer of flax's cells (OptimizedLSTMCell,
             Hochreiter & Schmidhuber 1997; GRUCell, Cho et al. 2014); the
             state restarts at each document, and with span=parent at each
             parent unit (a MEGABYTE-style local model); `window` is refused
  conv:K     a causal depthwise convolution of K taps then a pointwise
             projection (the K-1 previous positions of its unit/document)

Every mixer layer has the same two call forms:
  teacher-forced  (h [B, T, D], positions, unit_ids, doc_ids) -> [B, T, D],
                  sowing its per-position cache ('intermediates'/'cache')
                  for the decoder's prefill;
  incremental     (h [B, 1, D], positions, cache=, index=, key_mask=) ->
                  (out, cache): the cache holds one entry per slot (keys and
                  values, recurrent states, or inputs; `step_cache` puts the
                  sown one in the layout the step reads), the step writes slot
                  `index` [B] (>= S: writes nothing) and reads what
                  `key_mask` = (start [B], mask [B, W]) lets it see.
So the cached decoder treats every mixer alike (mgm/model/incremental.py).

Adding a kind: one class here, registered in `MIXERS`, and its layer module.
"""
import abc
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.kinds import Kind, KindError, Registry, positive_arg
from mgm.nn.attention import SelfAttention, step_layout
from mgm.nn.layers import Dtype, Linear

MIXERS = Registry("mixer", "mixer", "attention, lstm, gru or conv:K (K >= 1 taps)")


class Mixer(Kind, abc.ABC):
  """Base of the mixer kinds. `param_name`: the layer's name in each block."""
  field: ClassVar[str] = "mixer"
  param_name: ClassVar[str]

  def check_span(self, span):
    """KindError (field 'span') when this mixer cannot honour `span`."""

  @abc.abstractmethod
  def layer(self, width, heads, span, unit_window, spec, name) -> nn.Module:
    """The mixing layer of one block (spec: the ModelSpec's shared settings)."""

  @abc.abstractmethod
  def flops(self, width: int, keys: float) -> float:
    """Forward matmul FLOPs per position of one layer (keys: attended per query)."""

  def step_cache(self, cache):
    """The sown per-position cache (leaves [B, S, ...]) -> the one the incremental
    form steps on (default: the same)."""
    return cache


@MIXERS.register
@dataclasses.dataclass(frozen=True)
class Attention(Mixer):
  name: ClassVar[str] = "attention"
  param_name: ClassVar[str] = "attn"

  def layer(self, width, heads, span, unit_window, spec, name):
    return SelfAttention(width=width, heads=heads, span=span, rope_base=spec.rope_base,
                         qk_norm=spec.qk_norm, dtype=spec.compute_dtype,
                         unit_window=unit_window, attention_impl=spec.attention_impl, name=name)

  def flops(self, width, keys):
    return 2 * 4 * width * width + 2 * 2 * width * keys   # q, k, v, o; scores, values

  def step_cache(self, cache):
    return step_layout(cache)                            # k, v: [B, N, S, H]


class _Recurrent(Mixer):
  param_name: ClassVar[str] = "rnn"
  cell: ClassVar[Any]
  gates: ClassVar[int]

  def check_span(self, span):
    if span.local:
      raise KindError("span", f"a {self.name} mixer carries its whole past in its state, "
                      f"so it cannot see only a window ({span}); use full, or parent to "
                      "restart the state at each parent unit")

  def layer(self, width, heads, span, unit_window, spec, name):
    return Recurrent(self.cell, width, spec.compute_dtype, name=name)

  def flops(self, width, keys):
    return 2 * 2 * self.gates * width * width   # input and recurrent kernel per gate


@MIXERS.register
@dataclasses.dataclass(frozen=True)
class LSTM(_Recurrent):
  name: ClassVar[str] = "lstm"
  cell: ClassVar[Any] = nn.OptimizedLSTMCell
  gates: ClassVar[int] = 4


@MIXERS.register
@dataclasses.dataclass(frozen=True)
class GRU(_Recurrent):
  name: ClassVar[str] = "gru"
  cell: ClassVar[Any] = nn.GRUCell
  gates: ClassVar[int] = 3


@MIXERS.register
@dataclasses.dataclass(frozen=True)
class Conv(Mixer):
  name: ClassVar[str] = "conv"
  param_name: ClassVar[str] = "conv"
  kernel: int = 4

  @classmethod
  def parse(cls, arg):
    return cls() if arg is None else cls(positive_arg("mixer", "conv", arg, "kernel size"))

  def check_span(self, span):
    if span.local:
      raise KindError("span", f"a conv mixer's window is its kernel ({self.kernel} taps); "
                      f"use span full or parent, not {span}")

  def layer(self, width, heads, span, unit_window, spec, name):
    return CausalConv(width, self.kernel, spec.compute_dtype, name=name)

  def flops(self, width, keys):
    return 2 * width * width + 2 * self.kernel * width   # pointwise + depthwise taps

  def __str__(self):
    return f"conv:{self.kernel}"


# -- layers -------------------------------------------------------------------

def restarts(length: int, ids=None):
  """[B or 1, T] bool: position t starts a new sequence (t = 0, or its id differs
  from position t-1's); ids [B, T] are unit or document ids."""
  first = jnp.arange(length)[None] == 0
  if ids is None:
    return first
  prev = jnp.pad(ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  return first | (ids != prev)


def visible(key_mask, slots, total: int):
  """Incremental: may the query see cache slots `slots` [B]? key_mask = (start
  [B], mask [B, W]) as cached attention reads it; `total` = S."""
  start, mask = key_mask
  offset = slots - start
  inside = (slots >= 0) & (slots < total) & (offset >= 0) & (offset < mask.shape[1])
  seen = jnp.take_along_axis(mask, jnp.clip(offset, 0, mask.shape[1] - 1)[:, None], axis=1)
  return inside & seen[:, 0]


def write_slot(cache, index, x):
  """cache [B, S, ...] with row b's slot index[b] set to x[b] (index >= S: no write)."""
  rows = jnp.arange(x.shape[0])
  return cache.at[rows, index].set(x.astype(cache.dtype), mode="drop")


def read_slot(cache, slots):
  """cache [B, S, ...] -> [B, ...] at slots [B] (clipped)."""
  index = jnp.clip(slots, 0, cache.shape[1] - 1)
  return jnp.take_along_axis(cache, index.reshape((-1, 1) + (1,) * (cache.ndim - 2)),
                             axis=1)[:, 0]


# Scans of at most this many steps are unrolled (a MEGABYTE patch's 8 bytes: no
# loop overhead); longer ones run as a loop, which XLA's cost analysis counts
# once (tests/test_flops.py unrolls them to check the FLOPs formula).
UNROLL_UP_TO = 16


class _ResetCell(nn.Module):
  """One time step of a flax RNN cell whose state restarts (zeros) where `reset`."""
  cell: Any
  width: int
  dtype: Dtype

  @nn.compact
  def __call__(self, carry, inputs):
    x, reset = inputs                                   # [B, D], [B]
    carry = jax.tree.map(lambda c: jnp.where(reset[:, None], 0, c).astype(c.dtype), carry)
    # Kernels are sharded over one mesh axis only (`embed`: fsdp): with XLA 0.10.2
    # a scan's broadcast parameters sharded over two axes (embed x mlp) get wrong
    # gradients on a 2x2x2 mesh (forward right; tests/test_mixers.py).
    part = lambda init, axes: nn.with_logical_partitioning(init, axes)
    carry, y = self.cell(
        self.width, dtype=self.dtype,
        kernel_init=part(nn.initializers.lecun_normal(), ("embed", None)),
        recurrent_kernel_init=part(nn.initializers.orthogonal(), ("embed", None)),
        bias_init=part(nn.initializers.zeros_init(), (None,)), name="cell")(carry, x)
    return carry, (y, carry)


class Recurrent(nn.Module):
  """A recurrent mixing layer (see module doc): h [B, T, D] -> [B, T, D]."""
  cell: Any
  width: int
  dtype: Dtype = jnp.float32

  def _zeros(self, batch):
    """The initial state, float32 whatever the compute dtype (cells keep it so)."""
    z = jnp.zeros((batch, self.width), jnp.float32)
    return (z, z) if self.cell is nn.OptimizedLSTMCell else z

  @nn.compact
  def __call__(self, h, positions, unit_ids=None, doc_ids=None, cache=None, index=None,
               key_mask=None):
    b, t, _ = h.shape
    if cache is not None:                               # one step
      prev = index - 1
      seen = visible(key_mask, prev, jax.tree.leaves(cache)[0].shape[1])
      carry = jax.tree.map(lambda c: read_slot(c, prev), cache)
      step = _ResetCell(self.cell, self.width, self.dtype, name="steps")
      _, (y, carry) = step(carry, (h[:, 0], ~seen))
      cache = jax.tree.map(lambda c, x: write_slot(c, index, x), cache, carry)
      return y[:, None].astype(self.dtype), cache
    ids = unit_ids if unit_ids is not None else doc_ids
    reset = jnp.broadcast_to(restarts(t, ids), (b, t))
    scan = nn.scan(_ResetCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, unroll=t if t <= UNROLL_UP_TO else 1)
    _, (y, carries) = scan(self.cell, self.width, self.dtype, name="steps")(
        self._zeros(b), (h, reset))
    self.sow("intermediates", "cache", carries)         # state after each position
    return y.astype(self.dtype)


class CausalConv(nn.Module):
  """Depthwise causal convolution of `kernel` taps (each position reads its
  kernel-1 predecessors of the same unit/document) then a pointwise projection:
  h [B, T, D] -> [B, T, D]."""
  width: int
  kernel: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, positions, unit_ids=None, doc_ids=None, cache=None, index=None,
               key_mask=None):
    taps = self.param("taps", nn.with_logical_partitioning(
        nn.initializers.normal(self.kernel ** -0.5), (None, "embed")),
        (self.kernel, self.width), jnp.float32).astype(self.dtype)        # [K, D]
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (self.width,), jnp.float32).astype(self.dtype)
    if cache is not None:                               # one step
      inputs = write_slot(cache["x"], index, h[:, 0])
      total = inputs.shape[1]
      mixed = bias
      for j in range(self.kernel):
        slot = index - j
        seen = visible(key_mask, slot, total) | (j == 0)
        mixed = mixed + jnp.where(seen[:, None], read_slot(inputs, slot), 0) * taps[j]
      out = Linear((self.width, self.width), ("embed", "mlp"), dtype=self.dtype,
                   name="pointwise")(mixed)
      return out[:, None], {"x": inputs}
    self.sow("intermediates", "cache", {"x": h})
    b, t, _ = h.shape
    ids = unit_ids if unit_ids is not None else doc_ids
    mixed = bias + h * taps[0]
    for j in range(1, self.kernel):
      shifted = jnp.pad(h, ((0, 0), (j, 0), (0, 0)))[:, :t]               # h[t - j]
      keep = jnp.arange(t)[None] >= j
      if ids is not None:
        keep = keep & (jnp.pad(ids, ((0, 0), (j, 0)), constant_values=-1)[:, :t] == ids)
      mixed = mixed + jnp.where(keep[..., None], shifted, 0) * taps[j]
    return Linear((self.width, self.width), ("embed", "mlp"), dtype=self.dtype,
                  name="pointwise")(mixed)
