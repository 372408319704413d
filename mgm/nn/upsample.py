"""Upsampling kinds (`levels[i].upsample`): how a coarse unit's context reaches
each of its children at the next finer level (the up path, DESIGN §1).

  repeat   one projection, the same for every child (MEGABYTE, Yu et al.
           2023 §2.2; Hourglass's naive upsampling)
  linear   one projection per child position within the unit (Hourglass's
           linear upsampling, Nawrot et al. 2022 §3.3); fixed units only
  attention[:repeat|:linear]
           Hourglass's attention upsampling (§3.3, Table 7): each child's input
           (the query) cross-attends to the contexts of its own parent unit and
           the earlier units of its document, the units the one-unit shift has
           already made visible to it (never a later one); `:linear` (or
           `:repeat`) adds that kind's projection of the parent context, as
           Table 7's "attention + linear"

Each kind holds the projection's parameter shape, the teacher-forced form
(every child of every unit at once), the incremental form (one child, by its
position `kid` in the unit) and its FLOPs. A kind that `attends` also reads
the child's input `query` and the parent level's contexts with a mask of the
units each child may read (`visible`).

Adding a kind: one class here, registered in `UPSAMPLING`.
"""
import abc
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.kinds import Kind, KindError, Registry
from mgm.nn import cross_attention
from mgm.nn.layers import Dtype, Linear, RMSNorm

UPSAMPLING = Registry("upsampling", "upsample")


def child_slots(parents, num: int):
  """(parent, position within it) of each child, parents [B, L] -> ([B, L], [B, L]);
  a parent's children are consecutive. Parents out of range are clipped."""
  index = jnp.broadcast_to(jnp.arange(parents.shape[1]), parents.shape)
  first = jax.vmap(lambda i, p: jax.ops.segment_min(i, p, num))(index, parents)
  parents = jnp.clip(parents, 0, num - 1)
  return parents, index - jnp.take_along_axis(first, parents, axis=1)


class Upsampling(Kind, abc.ABC):
  """Base of the upsampling kinds."""
  field: ClassVar[str] = "upsample"
  needs_fixed_children: ClassVar[bool] = False
  attends: ClassVar[bool] = False     # reads `query` and earlier units' contexts

  @abc.abstractmethod
  def projection(self, parent_width, child_width, children_per_unit, dtype, name,
                 heads=1) -> nn.Module:
    """The module mapping a parent context to what its children receive
    (`heads`: the child level's, for a kind that attends)."""

  @abc.abstractmethod
  def teacher_forced(self, project, ctx, children_per_unit, parents, query=None,
                     visible=None):
    """ctx [B, N, D_parent] -> [B, L, D_child] added to each child's input;
    `children_per_unit` P (static units, children in order) or None, then
    `parents` [B, L] gives each child's unit. Kinds that attend: `query`
    [B, L, D_child] the children's inputs, `visible` [B, L, N] bool the units
    each child may read (`visible_units`)."""

  @abc.abstractmethod
  def incremental(self, project, ctx, kid, query=None, contexts=None, visible=None):
    """ctx [B, D_parent] of each row's open unit -> [B, D_child] for its child at
    position `kid` [B]. Kinds that attend: `query` [B, D_child] the child's
    input, `contexts` [B, N, D_parent] every unit slot's context and `visible`
    [B, N] bool the slots it may read."""

  def flops(self, parent_width: int, child_width: int, children: int, units: int = 0,
            executed: bool = False) -> float:
    """Forward matmul FLOPs for `children` children of `units` units (one
    projection each; `executed`: what runs, masked keys included)."""
    return 2 * parent_width * child_width * children


def visible_units(parents, slots: int, parent_docs=None, child_docs=None):
  """Which parent-level units each child may read: its own unit `parents` [...]
  and the earlier ones of its document (`parent_docs` [B, N] each unit's
  document, `child_docs` [...] each child's; None: one document) ->
  [..., slots] bool. A child's own unit is always its document's."""
  parents = jnp.clip(parents, 0, slots - 1)[..., None]
  units = jnp.arange(slots)
  earlier = units < parents
  if parent_docs is not None:
    docs = parent_docs if parents.ndim == 2 else parent_docs[:, None]   # [B, (1,) N]
    earlier &= docs == child_docs[..., None]
  return earlier | (units == parents)


@UPSAMPLING.register
@dataclasses.dataclass(frozen=True)
class Repeat(Upsampling):
  name: ClassVar[str] = "repeat"

  def projection(self, parent_width, child_width, children_per_unit, dtype, name,
                 heads=1):
    return Linear((parent_width, child_width), ("mlp", "embed"), dtype=dtype, name=name)

  def teacher_forced(self, project, ctx, children_per_unit, parents, query=None,
                     visible=None):
    if children_per_unit:
      return project(jnp.repeat(ctx, children_per_unit, axis=1))          # bnd,de->bne
    parents = jnp.clip(parents, 0, ctx.shape[1] - 1)
    return project(jnp.take_along_axis(ctx, parents[..., None], axis=1))

  def incremental(self, project, ctx, kid, query=None, contexts=None, visible=None):
    return project(ctx)


@UPSAMPLING.register
@dataclasses.dataclass(frozen=True)
class LinearUpsampling(Upsampling):
  name: ClassVar[str] = "linear"
  needs_fixed_children: ClassVar[bool] = True

  def projection(self, parent_width, child_width, children_per_unit, dtype, name,
                 heads=1):
    return Linear((parent_width, children_per_unit, child_width), ("mlp", None, "embed"),
                  dtype=dtype, name=name)                                  # bnd,dpe->bnpe

  def teacher_forced(self, project, ctx, children_per_unit, parents, query=None,
                     visible=None):
    out = project(ctx)                                        # [B, N, P, D_child]
    flat = out.reshape(out.shape[0], -1, out.shape[-1])       # [B, N * P, D_child]
    if children_per_unit:
      return flat
    parents, k = child_slots(parents, ctx.shape[1])
    index = parents * out.shape[2] + jnp.clip(k, 0, out.shape[2] - 1)
    return jnp.take_along_axis(flat, index[..., None], axis=1)

  def incremental(self, project, ctx, kid, query=None, contexts=None, visible=None):
    out = project(ctx)                                        # [B, P, D_child]
    slot = jnp.clip(kid, 0, out.shape[1] - 1)[:, None, None]
    return jnp.take_along_axis(out, slot, axis=1)[:, 0]


class UnitAttention(nn.Module):
  """Children's inputs attend to their parent level's unit contexts (no
  positions: which unit is which is in the contexts and the mask), plus an
  optional base projection of the parent context (`base`: an upsampling kind,
  its module built here with `children_per_unit`).

  __call__(ctx) -> the base projection of ctx; __call__(ctx, query, visible):
  query [B, L, D_child], ctx [B, N, D_parent], visible [B, L, N] bool (each row
  must see one unit at least) -> [B, L, D_child]."""
  parent_width: int
  child_width: int
  heads: int
  base: Upsampling | None = None
  children_per_unit: int | None = None
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.base is not None:
      self.project = self.base.projection(self.parent_width, self.child_width,
                                          self.children_per_unit, self.dtype, "base")
    h, dh = self.heads, self.child_width // self.heads
    proj = lambda d, name: Linear((d, h, dh), ("embed", "heads", "kv"), dtype=self.dtype,
                                  name=name)                           # bnd,dhk->bnhk
    self.query_norm = RMSNorm(dtype=self.dtype)
    self.context_norm = RMSNorm(dtype=self.dtype)
    self.query = proj(self.child_width, "query")
    self.key = proj(self.parent_width, "key")
    self.value = proj(self.parent_width, "value")
    self.out = Linear((h, dh, self.child_width), ("heads", "kv", "embed"), fan_in_axes=(0, 1),
                      dtype=self.dtype, name="out")                    # blhk,hkd->bld

  def __call__(self, ctx, query=None, visible=None):
    if query is None:
      return self.project(ctx)
    q = self.query(self.query_norm(query))                             # [B, L, H, Dh]
    c = self.context_norm(ctx)
    k, v = self.key(c), self.value(c)                                  # [B, N, H, Dh]
    out = jax.nn.dot_product_attention(q, k, v, mask=visible[:, None])  # [B, L, H, Dh]
    return self.out(out)


@UPSAMPLING.register
@dataclasses.dataclass(frozen=True)
class AttentionUpsampling(Upsampling):
  """`attention`: the cross-attention alone (its own parent's context is among
  the keys); `attention:linear` / `attention:repeat`: plus that kind's
  projection of the parent context (Hourglass Table 7's attention + linear)."""
  name: ClassVar[str] = "attention"
  attends: ClassVar[bool] = True
  base: str = ""

  @classmethod
  def parse(cls, arg):
    if arg is not None and arg not in ("repeat", "linear"):
      raise KindError(cls.field, f"attention:{arg} adds an unknown upsampling to the "
                      "attention; use attention, attention:repeat or attention:linear")
    return cls(arg or "")

  def __str__(self):
    return f"{self.name}:{self.base}" if self.base else self.name

  @property
  def base_kind(self) -> Upsampling | None:
    return UPSAMPLING.parse(self.base) if self.base else None

  @property
  def needs_fixed_children(self) -> bool:
    return bool(self.base) and self.base_kind.needs_fixed_children

  def projection(self, parent_width, child_width, children_per_unit, dtype, name,
                 heads=1):
    return UnitAttention(parent_width, child_width, heads, self.base_kind, children_per_unit,
                         dtype, name=name)

  def teacher_forced(self, project, ctx, children_per_unit, parents, query=None,
                     visible=None):
    out = project(ctx, query, visible)
    if self.base:
      out = out + self.base_kind.teacher_forced(project, ctx, children_per_unit, parents)
    return out

  def incremental(self, project, ctx, kid, query=None, contexts=None, visible=None):
    out = project(contexts, query[:, None], visible[:, None])[:, 0]
    if self.base:
      out = out + self.base_kind.incremental(project, ctx, kid)
    return out

  def flops(self, parent_width, child_width, children, units=0, executed=False):
    """Per child: query and output projections, scores and values over the units
    it reads (all `units` as executed, half of them on average causally); per
    unit: its key and value projections; plus the base kind's."""
    keys = units if executed else units / 2
    total = (children * cross_attention.flops_per_query(child_width, keys)
             + cross_attention.flops_per_memory(child_width, parent_width, units))
    if self.base:
      total += self.base_kind.flops(parent_width, child_width, children, units, executed)
    return total
