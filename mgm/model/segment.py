"""Segmenters: where each coarse level's units end, as causal functions of the tokens.

A unit boundary at token t (`bounds[B, T]`, True where token t closes a unit)
depends on x_<=t only, so generation can close units as it writes (DESIGN §1):
a word closes at a delimiter that follows a non-delimiter; a sentence at the
whitespace *after* . ! ?; a paragraph at the second newline of a blank line;
`fixed:P` every P tokens (document ends included, so patches stay static);
a document separator (EOS) closes every delimiter-defined unit.
A maximum unit length forces a boundary (SpaceByte-style). Levels are computed
coarsest first and boundaries are nested by OR: a coarse boundary is always a
finer one too.

Packed documents (data.packing=document_mask, `documents=True`): units never
span a document boundary. EOS already closes every delimiter-defined unit, and
a document's first token is segmented as the first token of a row (its
previous token reads as BOS). Fixed patches restart at each document start
(`document_levels`: `fixed:P` becomes "every P tokens of a document, the last
patch ending at its EOS"), as units from segmenters do; so they are no longer a
static grid of the row, and their count is bounded by `max_units` (default
1.5 x seq_len / P, enough while a row's documents average >= 2P tokens).

Unit counts are bounded by static maxima so shapes are static under jit; an
overflow is reported (`Segmentation.overflow`) and the train step refuses the
update, never truncating silently.
"""
import dataclasses

import jax
import jax.numpy as jnp

from mgm.data.tokenizer import BOS, EOS
from mgm.model.units import UNITS

# Internal units of `document_levels`: a unit per document (bounds at EOS only),
# cut every max_len tokens by the forcing rule.
DOCUMENT = "document"


def documents(tokens):
  """Document id of each position: the EOS count before it. [B, T] int32

  Position t belongs to the document that x_<t has opened, so the ids are a
  causal function of the tokens; on real tokens they are the pipeline's
  `segment_ids` minus 1 (each document there ends with one EOS).
  """
  eos = (tokens == EOS).astype(jnp.int32)
  return jnp.cumsum(eos, axis=1, dtype=jnp.int32) - eos


def document_levels(levels):
  """Coarse `levels` as run with packed documents: `fixed:P` -> patches of P
  tokens restarting at each document (see module doc); others unchanged."""
  out = []
  for level in levels:
    patch = level.units_kind.patch
    if patch:
      size = min(patch, level.max_len) if level.max_len else patch
      level = dataclasses.replace(level, units=DOCUMENT, max_len=size)
    out.append(level)
  return tuple(out)


def natural_bounds(units, tokens, documents: bool = False, t=None):
  """Boundaries from the tokens alone (before nesting and forcing). [B, T] bool

  `units`: a Units kind (or its config string); `t`: the tokens' positions
  (default 0..T-1); `documents`: a token after EOS is segmented as the first of
  a row."""
  units = UNITS.parse(units) if isinstance(units, str) else units
  prev = jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=BOS)[:, :-1]
  if documents:
    prev = jnp.where(prev == EOS, BOS, prev)
  t = jnp.arange(tokens.shape[1]) if t is None else t
  bounds = units.bounds(tokens, prev, t)
  return bounds | (tokens == EOS) if units.closes_at_eos else bounds


def force_max_len(bounds, max_len: int):
  """Add a boundary wherever a unit reaches `max_len` tokens. [B, T] bool"""
  t = jnp.arange(bounds.shape[1])
  last = jax.lax.cummax(jnp.where(bounds, t, -1), axis=1)        # last boundary <= t
  last_before = jnp.pad(last, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  return bounds | ((t - last_before) % max_len == 0)


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """Units of every coarse level i (0 = coarsest), for one batch of tokens."""
  bounds: tuple          # [B, T] bool per coarse level
  unit_of_token: tuple   # [B, T] int: index of the level-i unit holding token t
  counts: tuple          # [B] int: units per sequence
  max_units: tuple[int, ...]

  @property
  def overflow(self):
    """Largest excess of units over the static maximum, 0 when all fit. [] int"""
    excess = [jnp.max(c) - m for c, m in zip(self.counts, self.max_units)]
    return jnp.maximum(0, jnp.max(jnp.stack(excess))) if excess else jnp.zeros((), jnp.int32)

  def parents(self, i: int):
    """Parent (level i) of each element of level i+1: [B, N_{i+1}], or [B, T] for tokens.

    Elements that do not exist (padding units) get N_i, which pooling drops.
    """
    if i + 1 == len(self.bounds):
      return self.unit_of_token[i]
    fine, n_fine = self.unit_of_token[i + 1], self.max_units[i + 1]
    first = jax.vmap(lambda u, p: jax.ops.segment_max(p, u, n_fine))(fine, self.unit_of_token[i])
    return jnp.where(first < 0, self.max_units[i], first)


def segment(tokens, levels, seq_len: int, documents: bool = False) -> Segmentation:
  """Segment `tokens` [B, T] for the coarse `levels` (LevelSpecs, coarsest first);
  `documents`: packed documents (levels from `document_levels`)."""
  bounds, prev = [], None
  for level in levels:
    b = natural_bounds(level.units_kind, tokens, documents)
    if prev is not None:
      b = b | prev
    if level.max_len:
      b = force_max_len(b, level.max_len)
    bounds.append(b)
    prev = b
  unit_of_token = [jnp.cumsum(b, axis=1, dtype=jnp.int32) - b for b in bounds]
  counts = [u[:, -1] + 1 for u in unit_of_token]
  return Segmentation(tuple(bounds), tuple(unit_of_token), tuple(counts),
                      tuple(max_units(levels, i, seq_len) for i in range(len(levels))))


def fixed_patch(levels, i: int) -> int | None:
  """P when level i's units are exactly every P tokens (it and all coarser levels
  fixed, each period dividing the coarser one), else None."""
  period = None
  for level in levels[:i + 1]:
    patch = level.units_kind.patch
    if not patch or level.max_len or (period is not None and period % patch):
      return None
    period = patch
  return period


def max_units(levels, i: int, seq_len: int) -> int:
  """Static bound on level i's units per sequence."""
  patch = fixed_patch(levels, i)
  if patch:
    return seq_len // patch
  if not levels[i].max_units and levels[i].units == DOCUMENT:
    return -(-3 * seq_len // (2 * levels[i].max_len))
  return levels[i].max_units


def step_bounds(levels, prev, token, t, unit_lens, documents: bool = False):
  """One step of `segment` for the incremental decoder: do units close at token t?

  prev, token, t: [B] (the previous token, BOS at t = 0; this token; its
  position); unit_lens: per level, tokens already in the open unit [B].
  Returns (bounds [B] bool per level, unit_lens after token t). Same rules,
  nesting and forcing as `segment`: a forced boundary where the unit reaches
  max_len tokens is exactly where (t - last natural boundary) % max_len == 0.
  """
  bounds, lens, coarser = [], [], None
  pair = jnp.stack([prev, token], axis=1)
  for level, length in zip(levels, unit_lens):
    b = natural_bounds(level.units_kind, pair, documents, t[:, None] + jnp.arange(-1, 1))[:, 1]
    if coarser is not None:
      b = b | coarser
    length = length + 1
    if level.max_len:
      b = b | (length == level.max_len)
    bounds.append(b)
    lens.append(jnp.where(b, 0, length))
    coarser = b
  return bounds, lens
