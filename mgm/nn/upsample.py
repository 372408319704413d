"""Upsampling kinds (`levels[i].upsample`): how a coarse unit's context reaches
each of its children at the next finer level (the up path, DESIGN §1).

  repeat   one projection, the same for every child (MEGABYTE, Yu et al.
           2023 §2.2; Hourglass's naive upsampling)
  linear   one projection per child position within the unit (Hourglass's
           linear upsampling, Nawrot et al. 2022 §3.3); fixed units only

Each kind holds the projection's parameter shape, the teacher-forced form
(every child of every unit at once), the incremental form (one child, by its
position `kid` in the unit) and its FLOPs.

Adding a kind: one class here, registered in `UPSAMPLING`.
"""
import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from mgm.kinds import Kind, Registry
from mgm.nn.layers import Linear

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

  @abc.abstractmethod
  def projection(self, parent_width, child_width, children_per_unit, dtype, name) -> Linear:
    """The Linear mapping a parent context to what its children receive."""

  @abc.abstractmethod
  def teacher_forced(self, project, ctx, children_per_unit, parents):
    """ctx [B, N, D_parent] -> [B, L, D_child] added to each child's input;
    `children_per_unit` P (static units, children in order) or None, then
    `parents` [B, L] gives each child's unit."""

  @abc.abstractmethod
  def incremental(self, project, ctx, kid):
    """ctx [B, D_parent] of each row's open unit -> [B, D_child] for its child at
    position `kid` [B]."""

  def flops(self, parent_width: int, child_width: int, children: int) -> float:
    """Forward matmul FLOPs for `children` children (one projection each)."""
    return 2 * parent_width * child_width * children


@UPSAMPLING.register
@dataclasses.dataclass(frozen=True)
class Repeat(Upsampling):
  name: ClassVar[str] = "repeat"

  def projection(self, parent_width, child_width, children_per_unit, dtype, name):
    return Linear((parent_width, child_width), ("mlp", "embed"), dtype=dtype, name=name)

  def teacher_forced(self, project, ctx, children_per_unit, parents):
    if children_per_unit:
      return project(jnp.repeat(ctx, children_per_unit, axis=1))          # bnd,de->bne
    parents = jnp.clip(parents, 0, ctx.shape[1] - 1)
    return project(jnp.take_along_axis(ctx, parents[..., None], axis=1))

  def incremental(self, project, ctx, kid):
    return project(ctx)


@UPSAMPLING.register
@dataclasses.dataclass(frozen=True)
class LinearUpsampling(Upsampling):
  name: ClassVar[str] = "linear"
  needs_fixed_children: ClassVar[bool] = True

  def projection(self, parent_width, child_width, children_per_unit, dtype, name):
    return Linear((parent_width, children_per_unit, child_width), ("mlp", None, "embed"),
                  dtype=dtype, name=name)                                  # bnd,dpe->bnpe

  def teacher_forced(self, project, ctx, children_per_unit, parents):
    out = project(ctx)                                        # [B, N, P, D_child]
    flat = out.reshape(out.shape[0], -1, out.shape[-1])       # [B, N * P, D_child]
    if children_per_unit:
      return flat
    parents, k = child_slots(parents, ctx.shape[1])
    index = parents * out.shape[2] + jnp.clip(k, 0, out.shape[2] - 1)
    return jnp.take_along_axis(flat, index[..., None], axis=1)

  def incremental(self, project, ctx, kid):
    out = project(ctx)                                        # [B, P, D_child]
    slot = jnp.clip(kid, 0, out.shape[1] - 1)[:, None, None]
    return jnp.take_along_axis(out, slot, axis=1)[:, 0]
