"""Pool the elements of each unit into one vector (the down path, DESIGN §1).

Two layouts: `static` units of exactly k elements (reshape), and `dynamic`
units given by a parent index per element (segment ops; elements whose parent
is out of range are dropped). `concat` needs at most k elements per unit: in
the dynamic layout (fixed patches cut short by a document end) missing
elements are zeros.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.nn.layers import Dtype, Linear

POOLS = ("concat", "mean", "attention", "last")


def _segment(op, x, parents, num):
  """Batched jax.ops.segment_*: x [B, L, ...], parents [B, L] -> [B, num, ...]."""
  return jax.vmap(lambda xb, pb: op(xb, pb, num_segments=num))(x, parents)


class AttentivePool(nn.Module):
  """HAN attention weights: u_i = tanh(W h_i + b), alpha_i = softmax_i(v . u_i)."""
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
  """Children [B, L, D_child] -> units [B, N, width].

  `score` and `project` are the two learned pieces, exposed for the incremental
  decoder, which pools one child at a time.
  """
  kind: str
  width: int
  in_width: int          # D_child, times the children per unit for concat
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.kind == "attention":
      self.attention = AttentivePool(self.dtype)
    self.proj = Linear((self.in_width, self.width), ("mlp", "embed"), dtype=self.dtype)

  def score(self, x):
    return self.attention(x)

  def project(self, pooled):
    return self.proj(pooled)

  def __call__(self, x, *, num_units: int, children_per_unit: int | None = None,
               parents=None):
    b, length, width_in = x.shape
    if children_per_unit:                                    # static layout
      xs = x.reshape(b, num_units, children_per_unit, width_in)
      if self.kind == "concat":
        pooled = xs.reshape(b, num_units, children_per_unit * width_in)
      elif self.kind == "mean":
        pooled = xs.mean(axis=2)
      elif self.kind == "last":
        pooled = xs[:, :, -1]
      else:
        alpha = jax.nn.softmax(self.score(xs), axis=-1)
        pooled = jnp.einsum("bnk,bnkd->bnd", alpha.astype(x.dtype), xs)
    else:                                                    # dynamic layout
      pooled = self._dynamic(x, parents, num_units)
    return self.project(pooled)

  def _dynamic(self, x, parents, num):
    if self.kind == "concat":
      return self._dynamic_concat(x, parents, num)
    if self.kind == "mean":
      total = _segment(jax.ops.segment_sum, x, parents, num)
      count = _segment(jax.ops.segment_sum, jnp.ones(parents.shape, x.dtype), parents, num)
      return total / jnp.maximum(count, 1)[..., None]
    if self.kind == "last":
      index = jnp.broadcast_to(jnp.arange(x.shape[1]), parents.shape)
      last = _segment(jax.ops.segment_max, index, parents, num)          # [B, N]
      return jnp.take_along_axis(x, jnp.clip(last, 0)[..., None], axis=1)
    scores = self.score(x)                                               # [B, L]
    valid = (parents >= 0) & (parents < num)   # padding units' elements are dropped
    top = _segment(jax.ops.segment_max, scores, parents, num)
    top = jnp.take_along_axis(top, jnp.clip(parents, 0, num - 1), axis=1)
    shifted = jnp.where(valid, scores - jax.lax.stop_gradient(top), 0.0)
    weight = jnp.where(valid, jnp.exp(shifted), 0.0)   # no inf, so no NaN gradients
    norm = _segment(jax.ops.segment_sum, weight, parents, num)
    total = _segment(jax.ops.segment_sum, weight[..., None].astype(x.dtype) * x, parents, num)
    return total / jnp.maximum(norm, 1e-30)[..., None].astype(x.dtype)

  def _dynamic_concat(self, x, parents, num):
    """Units of at most P children (P = in_width / D_child; patches restarting at
    document starts): the k-th child of a unit fills slot k, missing slots are 0.
    x [B, L, D], parents [B, L] -> [B, num, P * D]."""
    b, length, width = x.shape
    p = self.in_width // width
    index = jnp.broadcast_to(jnp.arange(length), parents.shape)
    first = _segment(jax.ops.segment_min, index, parents, num)          # [B, num]
    k = index - jnp.take_along_axis(first, jnp.clip(parents, 0, num - 1), axis=1)
    valid = (parents >= 0) & (parents < num) & (k >= 0) & (k < p)
    slot = jnp.where(valid, parents * p + k, num * p)                  # num * p: dropped
    buf = _segment(jax.ops.segment_sum, x, slot, num * p)               # [B, num * P, D]
    return buf.reshape(b, num, p * width)
