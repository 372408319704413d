"""Small building blocks with logically partitioned parameters.

Kernels are declared with `self.param(..., nn.with_logical_partitioning(...))`:
`nn.DenseGeneral` with multi-dimensional features does not compose with
logical partitioning in this Flax (STACK-NOTES).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class Linear(nn.Module):
  """x [..., *in] -> y [..., *out] with W [*in, *out] of logical axes `axes`; the
  leading `fan_in_axes` of W are the contracted ones (e.g. btd,dnh->btnh: W
  [d, n, h], fan_in_axes (0,); btnh,nhd->btd: fan_in_axes (0, 1)).

  Applied as one 2-D matmul [prod(...), prod(in)] @ [prod(in), prod(out)]:
  XLA's CPU backend lays out a 3-D einsum's backward pass with transposes that
  cost as much as the matmuls (measured here: a width-256 MLP's forward and
  backward over 8 x 1024 tokens 1.6 s -> 0.8 s; the MEGABYTE step 5.4 -> 4.2 s).
  """
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
    n_in = len(self.fan_in_axes)
    assert self.fan_in_axes == tuple(range(n_in)), "contracted axes lead W"
    fan_in = math.prod(self.shape[:n_in])
    lead = x.shape[:x.ndim - n_in]
    y = x.reshape(-1, fan_in).astype(self.dtype) @ jnp.asarray(w, self.dtype).reshape(fan_in, -1)
    return y.reshape(*lead, *self.shape[n_in:])


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
  """Token embedding table [vocab, embed]: ids int [...] -> [..., embed]; or
  distributions over the vocabulary float [..., vocab] (one-hot or relaxed
  samples, mgm/adversarial.py) -> their expected embedding [..., embed]."""
  vocab_size: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")),
        (self.vocab_size, self.width), jnp.float32)
    table = jnp.asarray(table, self.dtype)
    if jnp.issubdtype(ids.dtype, jnp.floating):
      return jnp.einsum("...v,vd->...d", ids.astype(self.dtype), table)
    return jnp.take(table, ids, axis=0)
