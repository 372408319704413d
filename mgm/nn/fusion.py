"""Fusion kinds (`model.fusion`): the memories of k encoders (mgm/nn/encoders.py)
-> one memory [B, M, width] with its mask [B, M] (True: a real slot), which the
decoder's cross-attention reads. F = f(F_1, ..., F_k) is written here only.

Every kind first projects each encoder's memory [B, M_k, W_k] to `width`
(per-encoder parameters, shapes inferred at init) and adds a learned modality
embedding per encoder (so the decoder can tell whose slot it reads), then:

  concat       concatenates the projected memories along M (masks too):
               M = sum M_k
  gated        scales each projected memory by a gate vector before the
               modality embedding: sigmoid of a projection of every encoder's
               masked mean (content dependent, one gate vector per encoder),
               then concatenates: M = sum M_k
  attention:K  a Perceiver resampler (Jaegle et al. 2021; Alayrac et al. 2022,
               Flamingo §2.1): K learned queries cross-attend (multi-head,
               over real slots only) to the concatenated memory, then an MLP,
               pre-norm and residual: M = K, mask all True. `attention`
               without an argument is attention:64 (Flamingo's 64 latents).
               Heads: width / 64 where 64 divides the width, else 1.

Padded (masked) slots of an encoder change no real slot of the output.
"""
import abc
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.kinds import Kind, Registry, positive_arg
from mgm.nn.encoders import MultiHeadAttention, block_flops
from mgm.nn.layers import Dtype, Linear, RMSNorm
from mgm.nn.transformer import ACTIVATION, MLP

FUSION = Registry("fusion", "fusion", "concat, gated or attention:K (K learned queries)")

DEFAULT_QUERIES = 64
MLP_RATIO = 4          # attention: the resampler's MLP


def fusion_heads(width: int) -> int:
  """Heads of the attention fusion: head dimension 64 where it divides, else one head."""
  return width // 64 if width % 64 == 0 else 1


class Fusion(Kind, abc.ABC):
  """Base of the fusion kinds."""
  field: ClassVar[str] = "fusion"

  @abc.abstractmethod
  def module(self, width: int, dtype, name: str) -> nn.Module:
    """module([(memory [B, M_k, W_k], mask [B, M_k]), ...]) -> (memory [B, M,
    width] in dtype, mask [B, M] bool)."""

  @abc.abstractmethod
  def memory_len(self, lengths: list[int]) -> int:
    """M, from the encoders' memory lengths M_k."""

  @abc.abstractmethod
  def flops(self, widths: list[int], lengths: list[int], width: int) -> float:
    """Forward FLOPs per example (2 per multiply-add; matmuls and attention)."""


def projection_flops(widths, lengths, width) -> float:
  return sum(2 * w * width * m for w, m in zip(widths, lengths))


@FUSION.register
@dataclasses.dataclass(frozen=True)
class Concat(Fusion):
  name: ClassVar[str] = "concat"

  def module(self, width, dtype, name):
    return ConcatFusion(width, gated=False, dtype=dtype, name=name)

  def memory_len(self, lengths):
    return sum(lengths)

  def flops(self, widths, lengths, width):
    return projection_flops(widths, lengths, width)


@FUSION.register
@dataclasses.dataclass(frozen=True)
class Gated(Fusion):
  name: ClassVar[str] = "gated"

  def module(self, width, dtype, name):
    return ConcatFusion(width, gated=True, dtype=dtype, name=name)

  def memory_len(self, lengths):
    return sum(lengths)

  def flops(self, widths, lengths, width):
    k = len(widths)
    return projection_flops(widths, lengths, width) + 2 * (k * width) * (k * width)


@FUSION.register
@dataclasses.dataclass(frozen=True)
class Attention(Fusion):
  name: ClassVar[str] = "attention"
  queries: int = DEFAULT_QUERIES

  @classmethod
  def parse(cls, arg):
    return cls() if arg is None else cls(positive_arg("fusion", "attention", arg, "number "
                                                      "of queries"))

  def module(self, width, dtype, name):
    return Resampler(width, self.queries, dtype=dtype, name=name)

  def memory_len(self, lengths):
    return self.queries

  def flops(self, widths, lengths, width):
    m, k = sum(lengths), self.queries
    attention = block_flops(width, MLP_RATIO, k, m)       # queries: q, o, MLP; scores, values
    keys_values = 2 * 2 * width * width * (m - k)         # k, v at the M memory slots, not K
    return projection_flops(widths, lengths, width) + attention + keys_values

  def __str__(self):
    return f"attention:{self.queries}"


# -- modules ------------------------------------------------------------------

def masked_mean(x, mask):
  """x [B, M, D], mask [B, M] -> the mean over real slots [B, D] float32 (0 if none)."""
  m = mask[..., None].astype(jnp.float32)
  return (x.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class ConcatFusion(nn.Module):
  """concat and gated (module doc): memories -> (memory [B, sum M_k, width], mask)."""
  width: int
  gated: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, memories):
    if not memories:
      raise ValueError("fusion over zero encoders: give model.encoders at least one encoder")
    projected = [Linear((m.shape[-1], self.width), ("mlp", "embed"), dtype=self.dtype,
                        name=f"proj_{i}")(m) for i, (m, _) in enumerate(memories)]
    masks = [mask for _, mask in memories]
    if self.gated:
      means = jnp.concatenate([masked_mean(p, mask) for p, mask in zip(projected, masks)], -1)
      gates = jax.nn.sigmoid(Linear((means.shape[-1], len(memories), self.width),
                                    ("mlp", None, "embed"), name="gate")(means))   # [B, k, W]
      projected = [p * gates[:, i, None].astype(self.dtype) for i, p in enumerate(projected)]
    modality = self.param("modality", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (len(memories), self.width),
        jnp.float32)
    memory = jnp.concatenate([p + modality[i].astype(self.dtype)
                              for i, p in enumerate(projected)], axis=1)
    mask = jnp.concatenate(masks, axis=1)
    return nn.with_logical_constraint(memory.astype(self.dtype), ACTIVATION), mask


class Resampler(nn.Module):
  """attention:K (module doc): memories -> (memory [B, K, width], mask all True)."""
  width: int
  queries: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, memories):
    memory, mask = ConcatFusion(self.width, dtype=self.dtype, name="concat")(memories)
    latents = self.param("queries", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, "embed")), (self.queries, self.width), jnp.float32)
    x = jnp.broadcast_to(latents.astype(self.dtype), (memory.shape[0],) + latents.shape)
    keys = RMSNorm(dtype=self.dtype, name="memory_norm")(memory)
    h = RMSNorm(dtype=self.dtype, name="attn_norm")(x)
    x = x + MultiHeadAttention(self.width, fusion_heads(self.width), self.dtype,
                               name="attn")(h, keys, mask)
    h = RMSNorm(dtype=self.dtype, name="mlp_norm")(x)
    x = x + MLP(self.width, MLP_RATIO * self.width, self.dtype, name="mlp")(h)
    x = RMSNorm(dtype=self.dtype, name="final_norm")(x)
    return (nn.with_logical_constraint(x, ACTIVATION),
            jnp.ones((memory.shape[0], self.queries), bool))
