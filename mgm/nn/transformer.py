"""Pre-norm Transformer blocks and a causal stack of them."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.nn.attention import SelfAttention
from mgm.nn.layers import Dtype, Linear, RMSNorm

ACTIVATION = ("batch", "length", "embed")


class MLP(nn.Module):
  width: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = Linear("btd,df->btf", (self.width, self.hidden), ("embed", "mlp"),
               dtype=self.dtype, name="wi")(x)
    h = nn.with_logical_constraint(jax.nn.gelu(h), ("batch", "length", "mlp"))
    return Linear("btf,fd->btd", (self.hidden, self.width), ("mlp", "embed"),
                  dtype=self.dtype, name="wo")(h)


class Block(nn.Module):
  """x + Attn(Norm(x)), then + MLP(Norm(x))."""
  width: int
  heads: int
  mlp_ratio: int = 4
  span: str = "full"
  rope_base: float = 10_000.0
  qk_norm: bool = False
  dtype: Dtype = jnp.float32
  unit_window: int | None = None

  @nn.compact
  def __call__(self, x, positions, unit_ids=None):
    h = RMSNorm(dtype=self.dtype, name="attn_norm")(x)
    x = x + SelfAttention(self.width, self.heads, self.span, self.rope_base, self.qk_norm,
                          self.dtype, self.unit_window, name="attn")(h, positions, unit_ids)
    h = RMSNorm(dtype=self.dtype, name="mlp_norm")(x)
    x = x + MLP(self.width, self.width * self.mlp_ratio, self.dtype, name="mlp")(h)
    return nn.with_logical_constraint(x, ACTIVATION)


class Stack(nn.Module):
  """`depth` causal blocks; `remat` recomputes activations in the backward pass."""
  depth: int
  width: int
  heads: int
  mlp_ratio: int = 4
  span: str = "full"
  rope_base: float = 10_000.0
  qk_norm: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  unit_window: int | None = None

  @nn.compact
  def __call__(self, x, positions, unit_ids=None):
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block(self.width, self.heads, self.mlp_ratio, self.span, self.rope_base,
                self.qk_norm, self.dtype, self.unit_window,
                name=f"block_{i}")(x, positions, unit_ids)
    return x
