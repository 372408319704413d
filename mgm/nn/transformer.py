"""Pre-norm blocks (a mixer, then an MLP) and a causal stack of them.

A block is x + Mixer(Norm(x)), then, on a level with `cross_attention`,
+ CrossAttention(Norm(x), memory) (mgm/nn/cross_attention.py), then
+ MLP(Norm(x)); the mixer is the level's kind (mgm/nn/mixers.py: attention,
lstm, gru, conv). Blocks and stacks are configured by the ModelSpec (shared
settings) and the LevelSpec as run.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.nn.cross_attention import CrossAttention
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
  """x + Mixer(Norm(x)) [+ CrossAttention(Norm(x), memory)], then + MLP(Norm(x)).
  `spec`: the ModelSpec; `level`:
  the LevelSpec as run; `span`: the span kind the mixer honours (a level whose
  parents are fixed patches runs on patches with span full); `unit_window`:
  the longest parent unit, for span parent over delimiter units."""
  spec: Any
  level: Any
  span: Any
  unit_window: int | None = None

  @nn.compact
  def __call__(self, x, positions, unit_ids=None, doc_ids=None, cache=None, index=None,
               key_mask=None, memory=None):
    """Teacher-forced -> x; incremental (`cache`, see mgm/nn/mixers.py) -> (x, cache).
    `memory`: what the cross-attention reads (see mgm/nn/cross_attention.py);
    required on a level with cross_attention, ignored elsewhere."""
    dtype, mixer = self.spec.compute_dtype, self.level.mixer_kind
    h = RMSNorm(dtype=dtype, name="attn_norm")(x)
    layer = mixer.layer(self.level.width, self.level.heads, self.span, self.unit_window,
                        self.spec, name=mixer.param_name)
    if cache is None:
      x = x + layer(h, positions, unit_ids, doc_ids)
    else:
      out, cache = layer(h, positions, cache=cache, index=index, key_mask=key_mask)
      x = x + out
    if self.level.cross_attention:
      h = RMSNorm(dtype=dtype, name="cross_norm")(x)
      x = x + CrossAttention(self.level.width, self.level.heads, self.spec.qk_norm, dtype,
                             name="cross_attention")(h, memory)
    h = RMSNorm(dtype=dtype, name="mlp_norm")(x)
    width = self.level.width
    x = x + MLP(width, width * self.spec.mlp_ratio, dtype, name="mlp")(h)
    x = nn.with_logical_constraint(x, ACTIVATION)
    return x if cache is None else (x, cache)


# model.remat_policy -> what the backward pass keeps of a block's forward
# (None: only its input, everything else is recomputed).
REMAT_POLICIES = {"full": None,
                  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class ScanStep(nn.Module):
  """One block as a step of `nn.scan` over a stack's depth (model.scan_layers):
  (x, (cache, memory) of this block, shared arguments) -> (x, cache). Its
  parameters carry a leading [depth] axis (logical axis 'layers')."""
  spec: Any
  level: Any
  span: Any
  unit_window: int | None = None
  remat: bool = False

  @nn.compact
  def __call__(self, x, per_block, shared):
    cache, memory = per_block
    block = (nn.remat(Block, policy=REMAT_POLICIES[self.spec.remat_policy]) if self.remat
             else Block)(self.spec, self.level, self.span, self.unit_window, name="block")
    if cache is None:
      positions, unit_ids, doc_ids, mem = shared
      return block(x, positions, unit_ids, doc_ids, memory=mem if memory is None else memory), None
    positions, index, key_mask = shared
    return block(x, positions, cache=cache, index=index, key_mask=key_mask, memory=memory)


def _stacked(items):
  """A list of per-block pytrees -> one pytree with a leading [depth] axis."""
  return None if items is None else jax.tree.map(lambda *a: jnp.stack(a), *items)


def _unstacked(tree, depth: int) -> list:
  return [jax.tree.map(lambda a: a[i], tree) for i in range(depth)]


class Stack(nn.Module):
  """`depth` causal blocks (see Block for the fields); with `spec.remat` the
  backward pass recomputes activations, all of them (remat_policy 'full') or
  all but the matmul outputs ('save_dots'). With `spec.scan_layers` the blocks
  are one `nn.scan` (parameters 'blocks/block/...' with a leading [depth] axis):
  one block is compiled instead of `depth`, the same function
  (mgm/model/scan_layout.py converts the parameter trees)."""
  spec: Any
  level: Any
  depth: int
  span: Any
  unit_window: int | None = None

  @nn.compact
  def __call__(self, x, positions, unit_ids=None, caches=None, index=None, key_mask=None,
               doc_ids=None, memory=None):
    """Teacher-forced -> x; incremental (`caches`: one per block) -> (x, caches).
    `doc_ids` [B, T]: every mixer stays within each document. `memory` (levels with
    cross_attention): one memory dict for every block, or, incremental, a list
    of one per block (their projected keys and values)."""
    remat = self.spec.remat and caches is None
    if self.spec.scan_layers:
      return self._scanned(x, positions, unit_ids, caches, index, key_mask, doc_ids, memory,
                           remat)
    block = nn.remat(Block, policy=REMAT_POLICIES[self.spec.remat_policy]) if remat else Block
    new_caches = []
    for i in range(self.depth):
      layer = block(self.spec, self.level, self.span, self.unit_window, name=f"block_{i}")
      mem = memory[i] if isinstance(memory, (list, tuple)) else memory
      if caches is None:
        x = layer(x, positions, unit_ids, doc_ids, memory=mem)
      else:
        x, cache = layer(x, positions, cache=caches[i], index=index, key_mask=key_mask,
                         memory=mem)
        new_caches.append(cache)
    return x if caches is None else (x, new_caches)

  def _scanned(self, x, positions, unit_ids, caches, index, key_mask, doc_ids, memory, remat):
    per_block_memory = isinstance(memory, (list, tuple))
    scan = nn.scan(ScanStep, variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                   length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
    step = scan(self.spec, self.level, self.span, self.unit_window, remat, name="blocks")
    scanned_memory = _stacked(memory) if per_block_memory else None
    if caches is None:
      shared = (positions, unit_ids, doc_ids, None if per_block_memory else memory)
      x, _ = step(x, (None, scanned_memory), shared)
      return x
    x, new = step(x, (_stacked(caches), scanned_memory), (positions, index, key_mask))
    return x, _unstacked(new, self.depth)
