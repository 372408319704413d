"""Pooling kinds (`levels[i].pool`): a unit's children -> one vector (the down
path, DESIGN §1), then a learned projection to the unit's width.

Every kind holds all its forms, so the teacher-forced pass and the cached
decoder cannot drift apart:
  static(xs, scores)             units of exactly K children: xs [B, N, K, D]
  dynamic(x, parents, num, ...)  units given by a parent index per child
                                 (segment ops; out-of-range parents dropped)
  add / final / from_prefix      the incremental accumulator of an open unit,
                                 one child at a time, and its state after a
                                 prefix (prefill); an empty unit's accumulator
                                 is all zeros
  in_width, flops                widths and matmul FLOPs beyond the projection

Adding a kind: one class here, registered in `POOLING` (README, "Extending mgm").
"""
import abc
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.kinds import Kind, Registry
from mgm.nn.layers import Dtype, Linear

POOLING = Registry("pooling", "pool")


def segment_op(op, x, parents, num):
  """Batched jax.ops.segment_*: x [B, L, ...], parents [B, L] -> [B, num, ...]."""
  return jax.vmap(lambda xb, pb: op(xb, pb, num_segments=num))(x, parents)


def where_rows(cond, new, old):
  """Per-row select over pytrees: cond [B] bool."""
  return jax.tree.map(lambda a, b: jnp.where(
      cond.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


class Pooling(Kind, abc.ABC):
  """Base of the pooling kinds."""
  field: ClassVar[str] = "pool"
  needs_fixed_children: ClassVar[bool] = False   # a fixed number of children per unit
  learned_scores: ClassVar[bool] = False         # uses AttentivePool's scores

  def in_width(self, child_width: int, children_per_unit: int | None) -> int:
    """Width of the pooled vector the projection reads."""
    return child_width

  def flops(self, child_width: int, children: int) -> float:
    """Forward matmul FLOPs of pooling `children` children, projection excluded."""
    return 0.0

  @abc.abstractmethod
  def static(self, xs, scores):
    """xs [B, N, K, D] (scores [B, N, K] or None) -> [B, N, in_width]."""

  @abc.abstractmethod
  def dynamic(self, x, parents, num, scores, in_width):
    """x [B, L, D], parents [B, L] (scores [B, L]) -> [B, num, in_width]."""


  @abc.abstractmethod
  def add(self, acc, e, score) -> dict:
    """Accumulator after one more child e [B, D] (attention score [B])."""

  @abc.abstractmethod
  def final(self, acc):
    """The pooled vector [B, in_width] of the accumulated children."""

  @abc.abstractmethod
  def from_prefix(self, x, member, scores, start, patch) -> dict:
    """Accumulator of the open unit whose children are x [B, L, D] where
    member [B, L]; `start` [B] its first child's index."""


@POOLING.register
@dataclasses.dataclass(frozen=True)
class Mean(Pooling):
  name: ClassVar[str] = "mean"

  def static(self, xs, scores):
    return xs.mean(axis=2)

  def dynamic(self, x, parents, num, scores, in_width):
    total = segment_op(jax.ops.segment_sum, x, parents, num)
    count = segment_op(jax.ops.segment_sum, jnp.ones(parents.shape, x.dtype), parents, num)
    return total / jnp.maximum(count, 1)[..., None]

  def add(self, acc, e, score):
    return {"count": acc["count"] + 1, "sum": acc["sum"] + e}

  def final(self, acc):
    return acc["sum"] / jnp.maximum(acc["count"], 1)[:, None].astype(acc["sum"].dtype)

  def from_prefix(self, x, member, scores, start, patch):
    m = member[..., None].astype(x.dtype)
    return {"count": _count(member), "sum": jnp.sum(x * m, axis=1)}


@POOLING.register
@dataclasses.dataclass(frozen=True)
class Last(Pooling):
  """The unit's last child (its state after reading the whole unit)."""
  name: ClassVar[str] = "last"

  def static(self, xs, scores):
    return xs[:, :, -1]

  def dynamic(self, x, parents, num, scores, in_width):
    index = jnp.broadcast_to(jnp.arange(x.shape[1]), parents.shape)
    last = segment_op(jax.ops.segment_max, index, parents, num)          # [B, N]
    return jnp.take_along_axis(x, jnp.clip(last, 0)[..., None], axis=1)

  def add(self, acc, e, score):
    return {"count": acc["count"] + 1, "last": e}

  def final(self, acc):
    return acc["last"]

  def from_prefix(self, x, member, scores, start, patch):
    last = jnp.max(jnp.where(member, jnp.arange(x.shape[1]), -1), axis=1)
    picked = jnp.take_along_axis(x, jnp.clip(last, 0)[:, None, None], axis=1)[:, 0]
    return {"count": _count(member), "last": jnp.where((last >= 0)[:, None], picked, 0.0)}


@POOLING.register
@dataclasses.dataclass(frozen=True)
class Concat(Pooling):
  """The children side by side (Hourglass's linear shortening, Nawrot et al.
  2022 §3.2; MEGABYTE's patch embedding): needs at most P children per unit;
  missing ones (a patch cut short by a document end) are zeros."""
  name: ClassVar[str] = "concat"
  needs_fixed_children: ClassVar[bool] = True

  def in_width(self, child_width, children_per_unit):
    return child_width * children_per_unit

  def static(self, xs, scores):
    b, n, k, d = xs.shape
    return xs.reshape(b, n, k * d)

  def dynamic(self, x, parents, num, scores, in_width):
    """The k-th child of a unit fills slot k (P = in_width / D slots)."""
    b, length, width = x.shape
    p = in_width // width
    index = jnp.broadcast_to(jnp.arange(length), parents.shape)
    first = segment_op(jax.ops.segment_min, index, parents, num)        # [B, num]
    k = index - jnp.take_along_axis(first, jnp.clip(parents, 0, num - 1), axis=1)
    valid = (parents >= 0) & (parents < num) & (k >= 0) & (k < p)
    slot = jnp.where(valid, parents * p + k, num * p)                  # num * p: dropped
    buf = segment_op(jax.ops.segment_sum, x, slot, num * p)             # [B, num * P, D]
    return buf.reshape(b, num, p * width)

  def add(self, acc, e, score):
    slot = jnp.minimum(acc["count"], acc["buf"].shape[1] - 1)
    return {"count": acc["count"] + 1,
            "buf": acc["buf"].at[jnp.arange(e.shape[0]), slot].set(e)}

  def final(self, acc):
    return acc["buf"].reshape(acc["buf"].shape[0], -1)

  def from_prefix(self, x, member, scores, start, patch):
    m = member[..., None].astype(x.dtype)
    index = jnp.clip(start[:, None] + jnp.arange(patch), 0, x.shape[1] - 1)
    return {"count": _count(member), "buf": jnp.take_along_axis(x * m, index[..., None], axis=1)}


@POOLING.register
@dataclasses.dataclass(frozen=True)
class Attention(Pooling):
  """Attentive pooling (HAN, Yang et al. 2016 §2.2): weights softmax(v . tanh(W h + b))."""
  name: ClassVar[str] = "attention"
  learned_scores: ClassVar[bool] = True

  def flops(self, child_width, children):
    return 2 * child_width * child_width * children

  def static(self, xs, scores):
    alpha = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bnk,bnkd->bnd", alpha.astype(xs.dtype), xs)

  def dynamic(self, x, parents, num, scores, in_width):
    valid = (parents >= 0) & (parents < num)   # padding units' elements are dropped
    top = segment_op(jax.ops.segment_max, scores, parents, num)
    top = jnp.take_along_axis(top, jnp.clip(parents, 0, num - 1), axis=1)
    shifted = jnp.where(valid, scores - jax.lax.stop_gradient(top), 0.0)
    weight = jnp.where(valid, jnp.exp(shifted), 0.0)   # no inf, so no NaN gradients
    norm = segment_op(jax.ops.segment_sum, weight, parents, num)
    total = segment_op(jax.ops.segment_sum, weight[..., None].astype(x.dtype) * x, parents, num)
    return total / jnp.maximum(norm, 1e-30)[..., None].astype(x.dtype)

  def add(self, acc, e, score):
    """Online softmax: rescale by the running maximum."""
    first = acc["count"] == 0
    m = jnp.where(first, score, jnp.maximum(acc["m"], score))
    scale = jnp.where(first, 0.0, jnp.exp(acc["m"] - m))
    w = jnp.exp(score - m)
    return {"count": acc["count"] + 1, "m": m, "z": acc["z"] * scale + w,
            "sum": acc["sum"] * scale[:, None] + w[:, None] * e}

  def final(self, acc):
    return acc["sum"] / jnp.maximum(acc["z"], 1e-30)[:, None]

  def from_prefix(self, x, member, scores, start, patch):
    count = _count(member)
    top = jnp.max(jnp.where(member, scores, -jnp.inf), axis=1)
    top = jnp.where(count > 0, top, 0.0)
    w = jnp.where(member, jnp.exp(jnp.where(member, scores - top[:, None], 0.0)), 0.0)
    return {"count": count, "m": top, "z": jnp.sum(w, axis=1),
            "sum": jnp.sum(w[..., None] * x, axis=1)}


@POOLING.register
@dataclasses.dataclass(frozen=True)
class Max(Pooling):
  """The element-wise maximum over the unit's children (max-over-time pooling,
  Collobert et al. 2011 §3.3.2). Units without children (padding) pool to 0."""
  name: ClassVar[str] = "max"

  def static(self, xs, scores):
    return xs.max(axis=2)

  def dynamic(self, x, parents, num, scores, in_width):
    top = segment_op(jax.ops.segment_max, x, parents, num)             # -inf where empty
    return jnp.where(jnp.isfinite(top), top, 0.0).astype(x.dtype)

  def add(self, acc, e, score):
    first = (acc["count"] == 0)[:, None]
    return {"count": acc["count"] + 1, "max": jnp.where(first, e, jnp.maximum(acc["max"], e))}

  def final(self, acc):
    return acc["max"]

  def from_prefix(self, x, member, scores, start, patch):
    top = jnp.max(jnp.where(member[..., None], x, -jnp.inf), axis=1)
    return {"count": _count(member), "max": jnp.where(jnp.isfinite(top), top, 0.0)}


def _count(member):
  return jnp.sum(member, axis=1).astype(jnp.int32)


class AttentivePool(nn.Module):
  """HAN attention scores: u_i = tanh(W h_i + b), score_i = v . u_i."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [..., D] -> scores [...] (float32)."""
    width = x.shape[-1]
    u = Linear((width, width), ("embed", "mlp"), dtype=self.dtype, name="proj")(x)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                      (width,), jnp.float32)
    v = self.param("context", nn.with_logical_partitioning(
        nn.initializers.normal(width ** -0.5), ("mlp",)), (width,), jnp.float32)
    return jnp.einsum("...e,e->...", jnp.tanh(u.astype(jnp.float32) + bias), v)


class Pool(nn.Module):
  """Children [B, L, D_child] -> units [B, N, width], for any pooling `kind`.

  `score`, `project` and the kind's accumulator are what the incremental
  decoder uses to pool one child at a time (mgm/model/incremental.py).
  """
  kind: Pooling
  width: int
  in_width: int          # D_child, times the children per unit for concat
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.kind.learned_scores:
      self.attention = AttentivePool(self.dtype)
    self.proj = Linear((self.in_width, self.width), ("mlp", "embed"), dtype=self.dtype)

  def score(self, x):
    """x [..., D] -> [...] float32, or None for kinds without learned scores."""
    return self.attention(x) if self.kind.learned_scores else None

  def project(self, pooled):
    return self.proj(pooled)

  def __call__(self, x, *, num_units: int, children_per_unit: int | None = None,
               parents=None):
    b, length, width_in = x.shape
    if children_per_unit:                                    # static layout
      xs = x.reshape(b, num_units, children_per_unit, width_in)
      pooled = self.kind.static(xs, self.score(xs))
    else:                                                    # dynamic layout
      pooled = self.kind.dynamic(x, parents, num_units, self.score(x), self.in_width)
    return self.project(pooled)
