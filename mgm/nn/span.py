"""Span kinds (`levels[i].span`): which earlier positions of its level a
position's mixer sees (DESIGN §1).

  full       every earlier position (of its document under packing)
  parent     only positions of the same parent unit (MEGABYTE's local model)
  window:W   the W most recent positions, itself included (SpaceByte's local
             attention, Slagle 2024 §2)

Each kind holds its three forms: teacher-forced attention (`attend`), what an
incremental query reads (`slots`, `mask`), and the keys per query counted as
FLOPs (`keys`). A level whose parent units are fixed patches runs `parent` on
reshaped patches instead (mgm/model/lm.py), so `attend` sees `unit_ids` only
for delimiter units; `unit_window` is then the longest unit (max_len).

Adding a kind: one class here, registered in `SPANS`.
"""
import abc
import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from mgm.kinds import Kind, KindError, Registry, positive_arg
from mgm.nn import attention

SPANS = Registry("span", "span", "'full', 'parent' or 'window:W' with W a positive integer")


class Span(Kind, abc.ABC):
  """Base of the span kinds."""
  field: ClassVar[str] = "span"
  local: ClassVar[bool] = False   # only recent positions: a recurrent state cannot honour it
  within_parent: ClassVar[bool] = False   # only the parent unit's positions

  def check(self, level_index: int):
    """KindError when this span cannot serve the level at `level_index`."""

  @abc.abstractmethod
  def attend(self, q, k, v, *, unit_ids=None, unit_window=None, impl="auto", doc_ids=None):
    """Teacher-forced causal attention. q, k, v: [B, T, N, H] -> [B, T, N, H];
    `doc_ids` [B, T] keeps each query within its document."""

  def keys(self, length: int, executed: bool, unit_window: int | None = None) -> float:
    """Keys per query at a level of `length` positions, for FLOPs: the useful
    half of the causal square (MaxText's count), or with `executed` what the
    kernels compute (full squares; local blocks of 2W keys)."""
    return length if executed else length / 2

  def slots(self, total: int, unit_window: int | None = None) -> int:
    """How many cache slots an incremental query reads (the W most recent)."""
    return total

  def mask(self, keys, query, same_unit):
    """Incremental: which of the slots `keys` [B, W] a query at `query` [B] may
    see beyond causality and its document; `same_unit` [B, W] bool."""
    return jnp.ones(keys.shape, bool)


@SPANS.register
@dataclasses.dataclass(frozen=True)
class Full(Span):
  name: ClassVar[str] = "full"

  def attend(self, q, k, v, *, unit_ids=None, unit_window=None, impl="auto", doc_ids=None):
    return attention.full_attention(q, k, v, impl, doc_ids)


@SPANS.register
@dataclasses.dataclass(frozen=True)
class Parent(Span):
  name: ClassVar[str] = "parent"
  within_parent: ClassVar[bool] = True

  def check(self, level_index: int):
    if level_index == 0:
      raise KindError("span", "the coarsest level has no parent; use full or window:W")

  def attend(self, q, k, v, *, unit_ids=None, unit_window=None, impl="auto", doc_ids=None):
    if unit_ids is None:   # fixed parents arrive as reshaped patches
      return attention.full_attention(q, k, v, impl, doc_ids)
    if unit_window is None or unit_window >= q.shape[1]:
      return attention.masked_attention(q, k, v, unit_ids)   # units never span documents
    return attention.local_attention(q, k, v, unit_window, unit_ids)

  def keys(self, length, executed, unit_window=None):
    if unit_window:
      return Window(unit_window).keys(length, executed)
    return super().keys(length, executed)

  def slots(self, total, unit_window=None):
    return min(unit_window, total) if unit_window else total

  def mask(self, keys, query, same_unit):
    return same_unit


@SPANS.register
@dataclasses.dataclass(frozen=True)
class Window(Span):
  name: ClassVar[str] = "window"
  local: ClassVar[bool] = True
  size: int = 1

  @classmethod
  def parse(cls, arg):
    return cls(positive_arg("span", "window", arg, "window W"))

  def attend(self, q, k, v, *, unit_ids=None, unit_window=None, impl="auto", doc_ids=None):
    if self.size >= q.shape[1]:
      return attention.full_attention(q, k, v, impl, doc_ids)
    return attention.local_attention(q, k, v, self.size, doc_ids)

  def keys(self, length, executed, unit_window=None):
    if self.size < length:
      return 2 * self.size if executed else self.size / 2
    return super().keys(length, executed)

  def slots(self, total, unit_window=None):
    return min(self.size, total)

  def mask(self, keys, query, same_unit):
    return query[:, None] - keys < self.size

  def __str__(self):
    return f"window:{self.size}"
