"""The composed generator at inference: G_n o ... o G_1, one token at a time.

Each level keeps a KV cache per layer (its pre-layers and its generator), the
pooling state of its open unit, and that unit's context. The token level steps
every token; a coarse level steps only when one of its units closes. In a
batch, rows close units at different steps: updates are masked per row, and a
level's layers run (`lax.cond`) only when some row closes one of its units.

Slots: token caches are indexed by position, a coarse level's by unit index.
A pre-layer slot written for a row that did not close is that row's open slot,
rewritten when the unit closes before anything reads it; generator caches are
kept as they were for such rows (their open unit's keys are read by the next).

Documents (packing=document_mask): every slot records its document and its
position in it; a query attends only to its document's slots, at that
position, and a written EOS starts a document: the next token's input is BOS
and every level's next unit (EOS closed them all) gets the start vector. With
packing 'none' there is one document and positions are slot indices.

Conditioned models: a level with cross_attention keeps, per generator block,
the keys and values of the memory (and its padding mask), projected once at
prefill and read at every step ('cross' in the token state and each level's).

`prefill` builds the state from one teacher-forced pass over right-padded
prompts; `step` absorbs one token per row and returns the next logits.
Incremental logits equal the teacher-forced ones (tests/test_decode.py).
"""
import jax
import jax.numpy as jnp

from mgm.data.tokenizer import BOS, EOS
from mgm.model import segment as seg_lib
from mgm.model.lm import LM
from mgm.nn.pooling import where_rows
from mgm.nn.upsample import child_slots, visible_units


class Parts:
  """Pure callables for the model's pieces (so they can run inside lax.cond)."""

  def __init__(self, model: LM, params):
    self.lm = model.bind({"params": params})

  @staticmethod
  def pure(sub, method=None):
    module, variables = sub.unbind()
    return lambda *a, **k: module.apply(variables, *a, method=method, **k)

  def stack(self, kind, i):
    sub = (self.lm.pre_layers if kind == "pre" else self.lm.generators)[i]
    return None if sub is None else self.pure(sub)

  def embed(self, tokens):
    return self.pure(self.lm.embed)(tokens)

  def start(self, i):
    """Level i's start vector (the shifted input of its first unit). [D_i]"""
    return self.lm.starts[i]

  def context(self, i, ctx, kid, query, parent, doc):
    """Level i-1 context [B, D] -> the input added to its child at position `kid`
    [B] within it, as the parent's upsampling kind does it. A kind that attends
    reads the child's input `query` [B, D_i] and, from level i-1's state
    `parent`, the contexts of its open unit and the earlier ones of the
    child's document `doc` [B]."""
    kind = self.lm.spec.levels[i - 1].upsample_kind
    project = self.pure(self.lm.contexts[i - 1])
    if not kind.attends:
      return kind.incremental(project, ctx, kid)
    contexts = parent["ctxs"]                                     # [B, N, D]
    visible = visible_units(parent["closed"], contexts.shape[1], parent["doc_of_slot"], doc)
    return kind.incremental(project, ctx, kid, query, contexts, visible)

  def pool(self, i, method):
    return self.pure(self.lm.pools[i], method)

  def logits(self, x):
    return self.pure(self.lm, "logits")(x)


# -- which cache slots a query may read, and its rotary position ---------------

def token_keys(model: LM, p, tok_unit, tok_doc, doc_start, slots: int):
  """Key window (start [B], mask [B, W]) and rotary position [B] for a token-level
  query at p [B] of the document opened at doc_start [B] (tok_doc [B, S]: each
  slot's document): a local span reads only the W slots it can see."""
  n = len(model.levels)
  span = model._span(n - 1)
  patch = model._token_patch() if model._patched(n - 1) else None
  if patch:
    size, start = patch, p // patch * patch
  else:
    size = span.slots(slots, model._unit_window(n - 1))
    start = jnp.clip(p - size + 1, 0, slots - size)
  keys = start[:, None] + jnp.arange(size)                        # [B, W]
  unit = jnp.take_along_axis(tok_unit, p[:, None], axis=1)
  same_unit = jnp.take_along_axis(tok_unit, keys, axis=1) == unit
  mask = (keys <= p[:, None]) & span.mask(keys, p, same_unit)
  doc = jnp.take_along_axis(tok_doc, p[:, None], axis=1)
  mask &= jnp.take_along_axis(tok_doc, keys, axis=1) == doc
  return (start, mask), (p % patch if patch else p - doc_start)


def unit_keys(level, j, lv, slots: int):
  """Key window (start [B] = 0, mask [B, N]) and rotary position [B] for a
  coarse-level query at slot j [B]; `lv` holds each slot's parent, document and
  position in it ('parent_of_slot', 'doc_of_slot', 'pos_of_slot': [B, N])."""
  keys = jnp.arange(slots)[None]
  at_j = lambda a: jnp.take_along_axis(a, jnp.minimum(j, slots - 1)[:, None], axis=1)
  same_parent = lv["parent_of_slot"] == at_j(lv["parent_of_slot"])
  mask = (keys <= j[:, None]) & level.span_kind.mask(keys, j, same_parent)
  mask &= lv["doc_of_slot"] == at_j(lv["doc_of_slot"])
  return (jnp.zeros_like(j), mask), at_j(lv["pos_of_slot"])[:, 0]


def run_stack(fn, x, caches, index, mask, pos, cross=None):
  """One step of a stack: x [B, D] at slot `index` [B] -> (y [B, D], caches);
  `cross`: the memory keys and values of its blocks (cross-attending levels)."""
  if fn is None:
    return x, caches
  y, caches = fn(x[:, None], pos[:, None], caches=caches, index=index, key_mask=mask,
                 memory=cross)
  return y[:, 0], caches


# -- prefill -------------------------------------------------------------------

def _sown_block(sown_stack, j: int):
  """What block j of a stack sowed, unrolled ('block_j') or scanned ('blocks/block',
  every leaf with a leading [depth] axis; model.scan_layers)."""
  if "blocks" in sown_stack:
    return jax.tree.map(lambda a: a[j], sown_stack["blocks"]["block"])
  return sown_stack[f"block_{j}"]


def _caches_from(sown, name, level, depth, batch):
  """The per-position caches stack `name`'s mixers sowed (keys and values,
  recurrent states or inputs; mgm/nn/mixers.py) -> one cache per block, each
  leaf [B, S, ...] (patches unfolded), in the mixer's step layout (`step_cache`:
  attention's keys and values are [B, N, S, H])."""
  kind = level.mixer_kind
  unfold = lambda a: a.reshape(batch, -1, *a.shape[2:])
  return [kind.step_cache(jax.tree.map(unfold, _sown_block(sown[name], j)[kind.param_name]
                                       ["cache"][0])) for j in range(depth)]


def _cross_from(sown, name, level, memory):
  """Per generator block of a cross-attending level, the memory keys and values
  it sowed with the memory's mask; None for other levels."""
  if not level.cross_attention:
    return None
  return [{**_sown_block(sown[name], j)["cross_attention"]["cross"][0],
           "mask": memory["mask"]} for j in range(level.depth)]


def prefill(model: LM, params, tokens, lengths, cond=None, memory=None):
  """One teacher-forced pass over right-padded prompts tokens [B, S] of lengths [B]
  (and the conditioning inputs `cond` of a model with encoders, or its memory
  dict itself; see LM.forward).

  Returns (logits [B, S, V], state): logits[b, lengths[b]] is the next-token
  prediction, and `state` continues from there.
  """
  levels = model.levels
  n, (b, s) = len(levels), tokens.shape
  out, variables = model.apply({"params": params}, tokens, cond, memory, method=LM.forward,
                               mutable=["intermediates"])
  sown, parts, seg = variables["intermediates"], Parts(model, params), out["seg"]
  rows, valid = jnp.arange(b), jnp.arange(s)[None] < lengths[:, None]
  last = jnp.clip(lengths - 1, 0)
  docs = [_doc_ids_and_pos(d, size, b) for d, size in
          zip(out["docs"], list(seg.max_units) + [s])]
  at = jnp.clip(lengths, 0, s - 1)
  state = {
      "t": lengths.astype(jnp.int32),
      "prev": jnp.where(lengths > 0, tokens[rows, last], BOS),
      "tok_pre": _caches_from(sown, f"pre_{n - 1}", levels[-1], levels[-1].pre_layers, b),
      "tok_gen": _caches_from(sown, f"level_{n - 1}", levels[-1], levels[-1].depth, b),
      "tok_cross": _cross_from(sown, f"level_{n - 1}", levels[-1], out["memory"]),
      "tok_unit": seg.unit_of_token[-1] if n > 1 else jnp.zeros((b, s), jnp.int32),
      "tok_doc": docs[-1][0],
      "doc_start": (at - docs[-1][1][rows, at]).astype(jnp.int32),
      "levels": [],
  }
  if out["task"] is not None:            # a task mixture's task embedding [B, D]
    state["task"] = out["task"][:, 0]
  closed = [jnp.sum(bounds & valid, axis=1).astype(jnp.int32) for bounds in seg.bounds]
  for i, level in enumerate(levels[:-1]):
    last_bound = jnp.max(jnp.where(seg.bounds[i] & valid, jnp.arange(s), -1), axis=1)
    children = out["down"][i + 1]
    complete = lengths if i + 1 == n - 1 else closed[i + 1]
    member = ((jnp.arange(children.shape[1])[None] < complete[:, None])
              & (seg.parents(i) == closed[i][:, None]))
    scores = parts.pool(i, "score")(children) if level.pool_kind.learned_scores else None
    first_member = jnp.argmax(member, axis=1)            # the open unit's first child
    state["levels"].append({
        "pre": _caches_from(sown, f"pre_{i}", level, level.pre_layers, b),
        "gen": _caches_from(sown, f"level_{i}", level, level.depth, b),
        "cross": _cross_from(sown, f"level_{i}", level, out["memory"]),
        "closed": closed[i],
        "len": (lengths - 1 - last_bound).astype(jnp.int32),
        "acc": level.pool_kind.from_prefix(children, member, scores, first_member,
                                           model._static_patch(i)),
        "ctx": jnp.take_along_axis(out["contexts"][i], jnp.clip(
            closed[i], 0, seg.max_units[i] - 1)[:, None, None], axis=1)[:, 0],
        "parent_of_slot": (seg.parents(i - 1) if i else
                           jnp.zeros((b, seg.max_units[0]), jnp.int32)),
        "doc_of_slot": docs[i][0],
        "pos_of_slot": docs[i][1],
        "kid": _kid(seg, i, closed[i], b),
    })
    if level.upsample_kind.attends:          # every unit slot's context, for its children
      state["levels"][-1]["ctxs"] = out["contexts"][i]
  return out["logits"], state


def _kid(seg, i, slot, batch: int):
  """Position of level i's unit `slot` [B] within its parent unit. [B]"""
  if i == 0:
    return jnp.zeros((batch,), jnp.int32)
  n = seg.max_units[i]
  _, kid = child_slots(seg.parents(i - 1), seg.max_units[i - 1])
  return jnp.take_along_axis(kid, jnp.clip(slot, 0, n - 1)[:, None], axis=1)[:, 0]


def _doc_ids_and_pos(layout, size: int, batch: int):
  """(document id, position in it) [B, size] per slot: from a DocPositions, or one
  document at slot positions without document_mask."""
  if layout is None:
    return (jnp.zeros((batch, size), jnp.int32),
            jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (batch, size)))
  return layout.ids.astype(jnp.int32), layout.pos.astype(jnp.int32)


# -- one step ------------------------------------------------------------------

def _pool_and_close(parts, model, i, lv, elem, has, close):
  """Level i absorbs a child; where its unit closes, pool it and run its pre-layers."""
  level = model.levels[i]
  kind = level.pool_kind
  score = parts.pool(i, "score")(elem) if kind.learned_scores else None
  acc = where_rows(has, kind.add(lv["acc"], elem, score), lv["acc"])
  width = level.width

  def close_units(acc, caches):
    down = parts.pool(i, "project")(kind.final(acc))
    mask, pos = unit_keys(level, lv["closed"], lv, lv["parent_of_slot"].shape[1])
    return run_stack(parts.stack("pre", i), down, caches, lv["closed"], mask, pos)

  skip = lambda acc, caches: (jnp.zeros((elem.shape[0], width), elem.dtype), caches)
  down, pre = jax.lax.cond(jnp.any(close), close_units, skip, acc, lv["pre"])
  empty = jax.tree.map(jnp.zeros_like, acc)
  acc = where_rows(close, empty, acc)
  return down, {**lv, "acc": acc, "pre": pre}


def _open_unit(parts, model, i, lv, down, parent_ctx, parent_closed, close, doc, new_doc,
               parent_close, parent=None):
  """Where level i closed a unit, run G_i on the new one: input = the closed unit's
  summary, or the start vector where it opens document `doc` [B] (`new_doc` [B])
  (+ its parent's context, which opened a unit too where `parent_close` [B];
  `parent`: level i-1's state); its output is the new unit's context."""
  level = model.levels[i]
  closed = lv["closed"] + close.astype(jnp.int32)
  kid = lv["kid"] if parent_close is None else jnp.where(
      close, jnp.where(parent_close, 0, lv["kid"] + 1), lv["kid"])
  rows = jnp.arange(closed.shape[0])
  slot = jnp.minimum(closed, lv["parent_of_slot"].shape[1] - 1)
  put = lambda a, value: a.at[rows, slot].set(jnp.where(close, value, a[rows, slot]))
  prev_pos = lv["pos_of_slot"][rows, jnp.maximum(slot - 1, 0)]
  lv = {**lv, "doc_of_slot": put(lv["doc_of_slot"], doc),
        "pos_of_slot": put(lv["pos_of_slot"], jnp.where(new_doc, 0, prev_pos + 1))}
  if parent_closed is not None:
    lv["parent_of_slot"] = put(lv["parent_of_slot"], parent_closed)
  parent_of_slot = lv["parent_of_slot"]
  down = jnp.where(new_doc[:, None], parts.start(i).astype(down.dtype), down)

  def step_level(caches):
    x = down if parent_ctx is None else down + parts.context(i, parent_ctx, kid, down,
                                                             parent, doc)
    mask, pos = unit_keys(level, closed, lv, parent_of_slot.shape[1])
    # Rows that did not close write nothing (index past the end): their open
    # unit's keys, which later units read, stay as they are.
    write_at = jnp.where(close, closed, parent_of_slot.shape[1])
    return run_stack(parts.stack("gen", i), x, caches, write_at, mask, pos, lv["cross"])

  ctx, gen = jax.lax.cond(jnp.any(close), step_level, lambda c: (lv["ctx"], c), lv["gen"])
  ctx = jnp.where(close[:, None], ctx, lv["ctx"])
  if "ctxs" in lv:                                  # the open unit's slot holds its context
    lv["ctxs"] = lv["ctxs"].at[rows, slot].set(ctx)
  return {**lv, "gen": gen, "ctx": ctx, "closed": closed, "kid": kid}


def step(model: LM, params, state, token):
  """Absorb `token` [B] at position state['t']; return (logits [B, V] for the next
  position, new state)."""
  levels, parts = model.levels, Parts(model, params)
  n, t = len(levels), state["t"]
  slots, rows = state["tok_unit"].shape[1], jnp.arange(t.shape[0])
  tok_doc, doc_start = state["tok_doc"], state["doc_start"]
  mask, pos = token_keys(model, t, state["tok_unit"], tok_doc, doc_start, slots)
  task = state.get("task")
  embed = lambda ids: parts.embed(ids) if task is None else parts.embed(ids) + task
  h, tok_pre = run_stack(parts.stack("pre", n - 1), embed(token),
                         state["tok_pre"], t, mask, pos)
  bounds, lens = seg_lib.step_bounds(levels[:-1], state["prev"], token, t,
                                     [lv["len"] for lv in state["levels"]],
                                     model.document_mask)
  nxt = jnp.minimum(t + 1, slots - 1)
  new_doc = (token == EOS) & model.document_mask          # EOS: the next token opens one
  doc = tok_doc[rows, jnp.minimum(t, slots - 1)] + new_doc.astype(jnp.int32)
  lvs = [dict(lv, len=length) for lv, length in zip(state["levels"], lens)]
  elem, has, downs = h, jnp.ones(t.shape, bool), [None] * (n - 1)
  for i in reversed(range(n - 1)):                      # down path: fine -> coarse
    downs[i], lvs[i] = _pool_and_close(parts, model, i, lvs[i], elem, has, bounds[i])
    elem, has = downs[i], bounds[i]
  parent_ctx, parent_closed = None, None
  for i in range(n - 1):                                # up path: coarse -> fine
    lvs[i] = _open_unit(parts, model, i, lvs[i], downs[i], parent_ctx, parent_closed,
                        bounds[i], doc, new_doc, bounds[i - 1] if i else None,
                        lvs[i - 1] if i else None)
    parent_ctx, parent_closed = lvs[i]["ctx"], lvs[i]["closed"]
  tok_unit = state["tok_unit"]
  if n > 1:
    tok_unit = tok_unit.at[rows, nxt].set(parent_closed)
  tok_doc = tok_doc.at[rows, nxt].set(doc)
  doc_start = jnp.where(new_doc, nxt, doc_start)
  x = jnp.where(new_doc[:, None], embed(jnp.full(token.shape, BOS)).astype(h.dtype), h)
  if parent_ctx is not None:
    x = x + parts.context(n - 1, parent_ctx, lvs[-1]["len"], x, lvs[-1], doc)
  mask, pos = token_keys(model, nxt, tok_unit, tok_doc, doc_start, slots)
  out, tok_gen = run_stack(parts.stack("gen", n - 1), x, state["tok_gen"], nxt, mask, pos,
                           state["tok_cross"])
  logits = parts.logits(out[:, None])[:, 0]
  new_state = {"t": t + 1, "prev": token, "tok_pre": tok_pre, "tok_gen": tok_gen,
               "tok_cross": state["tok_cross"],
               "tok_unit": tok_unit, "tok_doc": tok_doc, "doc_start": doc_start,
               "levels": lvs}
  if task is not None:
    new_state["task"] = task
  return logits, new_state
