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
    h = Linear((self.width, self.hidden), ("embed", "mlp"), dtype=self.dtype,
               name="wi")(x)                                           # btd,df->btf
    h = nn.with_logical_constraint(jax.nn.gelu(h), ("batch", "length", "mlp"))
    return Linear((self.hidden, self.width), ("mlp", "embed"), dtype=self.dtype,
                  name="wo")(h)                                        # btf,fd->btd


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
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x, positions, unit_ids=None, cache=None, index=None, key_mask=None,
               doc_ids=None):
    """Teacher-forced -> x; incremental (`cache`, see SelfAttention) -> (x, cache)."""
    h = RMSNorm(dtype=self.dtype, name="attn_norm")(x)
    attn = SelfAttention(self.width, self.heads, self.span, self.rope_base, self.qk_norm,
                         self.dtype, self.unit_window, self.attention_impl, name="attn")
    if cache is None:
      x = x + attn(h, positions, unit_ids, doc_ids=doc_ids)
    else:
      out, cache = attn(h, positions, cache=cache, index=index, key_mask=key_mask)
      x = x + out
    h = RMSNorm(dtype=self.dtype, name="mlp_norm")(x)
    x = x + MLP(self.width, self.width * self.mlp_ratio, self.dtype, name="mlp")(h)
    x = nn.with_logical_constraint(x, ACTIVATION)
    return x if cache is None else (x, cache)


# model.remat_policy -> what the backward pass keeps of a block's forward
# (None: only its input, everything else is recomputed).
REMAT_POLICIES = {"full": None,
                  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Stack(nn.Module):
  """`depth` causal blocks; `remat` recomputes activations in the backward pass,
  all of them (`remat_policy` 'full') or all but the matmul outputs ('save_dots')."""
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
  attention_impl: str = "auto"
  remat_policy: str = "full"

  @nn.compact
  def __call__(self, x, positions, unit_ids=None, caches=None, index=None, key_mask=None,
               doc_ids=None):
    """Teacher-forced -> x; incremental (`caches`: one per block) -> (x, caches).
    `doc_ids` [B, T]: attention stays within each document (see attend)."""
    remat = self.remat and caches is None
    block = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy]) if remat else Block
    new_caches = []
    for i in range(self.depth):
      layer = block(self.width, self.heads, self.mlp_ratio, self.span, self.rope_base,
                    self.qk_norm, self.dtype, self.unit_window, self.attention_impl,
                    name=f"block_{i}")
      if caches is None:
        x = layer(x, positions, unit_ids, None, None, None, doc_ids)
      else:
        x, cache = layer(x, positions, cache=caches[i], index=index, key_mask=key_mask)
        new_caches.append(cache)
    return x if caches is None else (x, new_caches)
