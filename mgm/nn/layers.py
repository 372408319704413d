"""Small building blocks with logically partitioned parameters.

Kernels are declared with `self.param(..., nn.with_logical_partitioning(...))`
and applied with `einsum`: `nn.DenseGeneral` with multi-dimensional features
does not compose with logical partitioning in this Flax (STACK-NOTES).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class Linear(nn.Module):
  """y = einsum(spec, x, W): W has `shape` and logical axes `axes`."""
  spec: str            # e.g. "btd,dnh->btnh"
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  fan_in_axes: tuple[int, ...] = (0,)
  dtype: Dtype = jnp.float32
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(
        self.init_scale, "fan_in", "normal",
        in_axis=self.fan_in_axes, out_axis=tuple(
            i for i in range(len(self.shape)) if i not in self.fan_in_axes))
    w = self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                   self.shape, jnp.float32)
    return jnp.einsum(self.spec, x.astype(self.dtype), jnp.asarray(w, self.dtype))


class RMSNorm(nn.Module):
  """RMS normalisation over the last axis with a learned scale ('embed')."""
  axis_name: str = "embed"
  dtype: Dtype = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones, (self.axis_name,)), (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.epsilon))
    return (y * scale).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, embed]."""
  vocab_size: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")),
        (self.vocab_size, self.width), jnp.float32)
    return jnp.take(jnp.asarray(table, self.dtype), ids, axis=0)
