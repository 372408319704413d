"""The multi-granularity LM: G = G_n o ... o G_1 over levels of units (DESIGN §1).

Levels are listed coarsest first; the last is the token level. One level is
exactly a decoder-only Transformer (the flat baseline, same code path).

  down path: embed tokens -> pre-layers -> pool each unit -> project -> pre-layers -> ...
  up path:   G_1 over level-1 units, fed the summary of the *previous* unit;
             G_l fed its previous unit's summary plus its parent's context; ...;
             G_n over tokens -> logits.

The one-unit shift makes every level causal: the prediction of token t sees
x_<t only, whatever the segmenter (tested by perturbation). The model takes the
target tokens x_1..x_T and returns logits[t] for p(x_t | x_<t).

Packing (data.packing): 'none' reads a row as one stream. 'document_mask'
reads each document of a row (EOS ends one; `segment.documents`) as if it
were alone: at every level attention stays within the document, rotary
positions restart at its first element, its first element's shifted input is
the start vector (BOS at the token level) rather than the previous document's
last unit, and units never span two documents (`segment.document_levels`).
So a document's logits do not depend on what was packed before it.

Conditioning (`spec.encoders`): the encoders read the inputs `cond` names
({'image': uint8 [B, H, W, C], 'source': int32 [B, S]}), the fusion makes one
memory [B, M, D_m] of theirs, and every level with `cross_attention` reads it
in each generator block. Without encoders it is the same model with no
memory.

Task mixtures (`spec.num_tasks` > 0, data.tasks; mgm/data/mixture.py): `cond`
also holds `task` int32 [B, 1], and a learned task embedding [num_tasks, D] of
the row's task is added to every token embedding (and to the BOS start), so
every level of the shared decoder knows the task from the first position on
(the decoder-side analogue of T5's task prefix, without spending positions).
`has_image` / `has_source` bool [B, 1] mark the rows whose task has that input;
the memory of a row with none of its inputs is all masked, and the
cross-attention then adds nothing to it.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgm.data.tokenizer import BOS, PAD
from mgm.model import segment as seg_lib
from mgm.model.loss import chunked_token_ce
from mgm.model.spec import ModelSpec
from mgm.nn.layers import Embed, Linear, RMSNorm
from mgm.nn.pooling import Pool
from mgm.nn.span import SPANS
from mgm.nn.upsample import visible_units
from mgm.nn.transformer import ACTIVATION, Stack


CONDITIONING = ("image", "source")   # batch keys the encoders read (mgm/data/paired.py)
TASK_KEYS = ("task", "has_image", "has_source")   # a task mixture's (mgm/data/mixture.py)


def conditioning(batch: dict) -> dict | None:
  """The conditioning inputs of a batch ({'image': ..., 'source': ...}), None if none."""
  cond = {k: batch[k] for k in CONDITIONING + TASK_KEYS if k in batch}
  return cond or None


def example_cond(spec: ModelSpec, batch: int) -> dict | None:
  """Zero conditioning inputs of the shapes the encoders read (for init), None
  without encoders: image uint8 [B, H, W, C], source int32 [B, S] of PAD."""
  cond = {}
  for e in spec.encoders:
    if e.encoder_kind.input == "image":
      cond["image"] = jnp.zeros((batch, e.image_size, e.image_size, e.channels), jnp.uint8)
    else:
      cond["source"] = jnp.full((batch, e.max_len), PAD, jnp.int32)
  if spec.num_tasks:
    cond["task"] = jnp.zeros((batch, 1), jnp.int32)
    cond.update({f"has_{name}": jnp.ones((batch, 1), bool) for name in spec.inputs})
  return cond or None


def shift_right(x, first):
  """[B, L, ...] -> [B, L, ...]: (first, x_0, ..., x_{L-2}); `first` broadcasts to x[:, :1]."""
  first = jnp.broadcast_to(first, (x.shape[0], 1) + x.shape[2:]).astype(x.dtype)
  return jnp.concatenate([first, x[:, :-1]], axis=1)


@dataclasses.dataclass(frozen=True)
class DocPositions:
  """Where each element of one level sits in its document (packing=document_mask).
  ids: [B, N] document id; pos: [B, N] index within the document; first: [B, N]
  bool, the document's first element."""
  ids: jax.Array
  pos: jax.Array
  first: jax.Array


def doc_positions(ids) -> DocPositions:
  """Positions of elements with document ids [B, N] (non-decreasing along N)."""
  n = jnp.arange(ids.shape[1])
  prev = jnp.pad(ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  first = (ids != prev) | (n == 0)
  start = jax.lax.cummax(jnp.where(first, n, 0), axis=1)
  return DocPositions(ids, n - start, first)


class LM(nn.Module):
  spec: ModelSpec
  packing: str = "none"    # none | document_mask (data.packing; see the module doc)

  @property
  def document_mask(self) -> bool:
    return self.packing == "document_mask"

  @property
  def levels(self):
    """The levels as run: `spec.levels`, with fixed patches restarting at each
    document under document_mask. Parameter shapes follow `spec.levels`."""
    levels = self.spec.levels
    if self.document_mask:
      return seg_lib.document_levels(levels[:-1]) + levels[-1:]
    return levels

  def setup(self):
    spec, levels = self.spec, self.levels
    dtype = spec.compute_dtype
    stack = lambda i, depth, name: Stack(spec, levels[i], depth, self._span(i),
                                         self._unit_window(i), name=name)
    self.embed = Embed(spec.vocab_size, levels[-1].width, dtype, name="embed")
    if spec.num_tasks:
      self.task_embed = self.param("task_embed", nn.with_logical_partitioning(
          nn.initializers.normal(1.0), (None, "embed")), (spec.num_tasks, levels[-1].width),
                                   jnp.float32)
    self.generators = [stack(i, l.depth, f"level_{i}") for i, l in enumerate(levels)]
    self.pre_layers = [stack(i, l.pre_layers, f"pre_{i}") if l.pre_layers else None
                       for i, l in enumerate(levels)]
    coarse = levels[:-1]
    self.pools = [Pool(l.pool_kind, l.width, self._pool_in_width(i), dtype, name=f"pool_{i}")
                  for i, l in enumerate(coarse)]
    self.starts = [self.param(f"start_{i}", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("embed",)), (l.width,), jnp.float32)
                   for i, l in enumerate(coarse)]
    self.contexts = [self._context_projection(i, dtype) for i in range(1, len(levels))]
    self.aux_heads = {i: Linear((l.width, spec.vocab_size), ("embed", "vocab"),
                                dtype=dtype, name=f"aux_head_{i}")     # bnd,dv->bnv
                      for i, l in enumerate(coarse) if l.aux_loss}
    self.encoders = [e.encoder_kind.module(e, dtype, name=f"encoder_{k}")
                     for k, e in enumerate(spec.encoders)]
    self.fusion = (spec.fusion_kind.module(spec.fused_width, dtype, name="fusion")
                   if spec.encoders and spec.fusion else None)
    self.final_norm = RMSNorm(dtype=dtype, name="final_norm")
    self.unembed = Linear((levels[-1].width, spec.vocab_size), ("embed", "vocab"),
                          dtype=dtype, name="unembed")                 # btd,dv->btv

  def _context_projection(self, i, dtype):
    """Level i-1 context -> level i inputs, as the parent's upsampling kind
    shapes it (mgm/nn/upsample.py)."""
    parent, child = self.spec.levels[i - 1], self.spec.levels[i]
    return parent.upsample_kind.projection(parent.width, child.width,
                                           self._static_patch(i - 1), dtype, f"context_{i}",
                                           heads=child.heads)

  # -- layout helpers --------------------------------------------------------

  def _patched(self, i) -> bool:
    """A token level attending within fixed parent patches runs on reshaped patches."""
    levels = self.levels
    return (i == len(levels) - 1 and levels[i].span_kind.within_parent
            and bool(self._token_patch()))

  def _span(self, i):
    """The span kind level i's mixers run with (full within reshaped patches)."""
    return SPANS.parse("full") if self._patched(i) else self.levels[i].span_kind

  def _token_patch(self):
    levels = self.levels
    return seg_lib.fixed_patch(levels[:-1], len(levels) - 2) if len(levels) > 1 else None

  def _unit_window(self, i):
    levels = self.levels
    if i == len(levels) - 1 and len(levels) > 1 and levels[-1].span_kind.within_parent:
      return levels[-2].max_len or None
    return None

  def _pool_in_width(self, i):
    child = self.spec.levels[i + 1].width
    return self.spec.levels[i].pool_kind.in_width(child, self._static_patch(i))

  def _patch(self, i):
    """Static elements per unit of level i+1 -> i as run (None when dynamic)."""
    return self._static_patch(i, self.levels)

  def _static_patch(self, i, levels=None):
    """Elements per unit of level i+1 -> i of `levels` (default `spec.levels`,
    which fixes parameter shapes), None when dynamic."""
    levels = self.spec.levels if levels is None else levels
    n = len(levels)
    outer = seg_lib.fixed_patch(levels[:-1], i)
    inner = 1 if i + 1 == n - 1 else seg_lib.fixed_patch(levels[:-1], i + 1)
    return outer // inner if outer and inner else None

  def _run(self, stack, i, x, seg, docs: DocPositions | None, memory=None):
    """Run a level-i stack over x [B, L, D] with that level's attention layout
    (and, given `docs`, within each document at document positions); `memory`
    for a generator that cross-attends."""
    if stack is None:
      return x
    b, length, width = x.shape
    if self._patched(i):
      p = self._token_patch()
      patches = x.reshape(b * length // p, p, width)
      pos = jnp.broadcast_to(jnp.arange(p), patches.shape[:2])
      return stack(patches, pos, memory=memory).reshape(b, length, width)
    unit_ids = seg.parents(i - 1) if self.levels[i].span_kind.within_parent else None
    if docs is None:
      return stack(x, jnp.broadcast_to(jnp.arange(length), (b, length)), unit_ids,
                   memory=memory)
    return stack(x, docs.pos, unit_ids, doc_ids=docs.ids, memory=memory)

  def _doc_layouts(self, tokens, seg):
    """Per level (coarsest first, tokens last), its DocPositions; Nones without
    document_mask. A unit's document is its tokens' (units never span two)."""
    n = len(self.levels)
    if not self.document_mask:
      return [None] * n
    ids = seg_lib.documents(tokens)
    per_unit = lambda u, m: jax.vmap(lambda d, ub: jax.ops.segment_max(d, ub, m))(ids, u)
    return [doc_positions(per_unit(seg.unit_of_token[i], seg.max_units[i]))
            for i in range(n - 1)] + [doc_positions(ids)]

  def _upsample(self, ctx, i, seg, x, docs):
    """Context of level i-1 units [B, N, D_{i-1}] -> what each element of level i
    adds to its input x [B, L, D_i] (the query of a kind that attends, reading
    its own unit and the earlier ones of its document)."""
    kind = self.spec.levels[i - 1].upsample_kind
    parents, visible = seg.parents(i - 1), None
    if kind.attends:
      same_doc = (docs[i - 1].ids, docs[i].ids) if docs[i] is not None else ()
      visible = visible_units(parents, ctx.shape[1], *same_doc)
    return kind.teacher_forced(self.contexts[i - 1], ctx, self._patch(i - 1), parents,
                               query=x, visible=visible)

  # -- forward ---------------------------------------------------------------

  def encode(self, cond: dict) -> dict:
    """The conditioning inputs -> the memory {'x': [B, M, D_m], 'mask': [B, M] bool}.
    Raises ValueError naming an input the encoders need and `cond` lacks."""
    memories = []
    for spec, encoder in zip(self.spec.encoders, self.encoders):
      name = spec.encoder_kind.input
      if name not in cond:
        raise ValueError(f"the model's {spec.kind} encoder reads {name!r}; the batch has "
                         f"{sorted(cond)}")
      x, mask = encoder(cond[name])                          # [B, M_k, W_k], [B, M_k]
      has = cond.get(f"has_{name}")                          # [B, 1]: mixtures (module doc)
      memories.append((x, mask if has is None else mask & has))
    x, mask = self.fusion(memories) if self.fusion is not None else memories[0]
    present = [cond[f"has_{n}"] for n in self.spec.inputs if f"has_{n}" in cond]
    if present:        # a fusion's own slots (attention:K) are real only with an input
      mask = mask & jnp.any(jnp.stack(present), axis=0)
    x = nn.with_logical_constraint(x, ACTIVATION)
    return {"x": x, "mask": mask}

  def __call__(self, tokens, mask=None, return_aux: bool = False, cond=None):
    """tokens: [B, T] int -> logits [B, T, V] float32 (and aux terms if asked);
    `cond`: the conditioning inputs of a model with encoders (see `encode`)."""
    out = self.forward(tokens, cond)
    if not return_aux:
      return out["logits"]
    mask = jnp.ones(tokens.shape, jnp.float32) if mask is None else mask
    return out["logits"], self._aux_terms(tokens, mask, out["seg"], out["contexts"])

  def forward(self, tokens, cond=None, memory=None):
    """The teacher-forced pass, with what the decoder's prefill needs:
    logits, per-level down vectors and contexts, the segmentation, and the
    per-level DocPositions (Nones without document_mask). The memory is
    encoded from `cond`, or given as a memory dict (tests)."""
    levels, n = self.levels, len(self.levels)
    if self.spec.encoders and memory is None:
      if cond is None:
        raise ValueError("a model with encoders needs its conditioning inputs `cond` "
                         f"({', '.join(self.spec.inputs)})")
      memory = self.encode(cond)
    b, t = tokens.shape
    seg = seg_lib.segment(tokens, levels[:-1], t, documents=self.document_mask)
    sizes = list(seg.max_units) + [t]
    docs = self._doc_layouts(tokens, seg)
    task = self.task_vector(cond)                               # [B, 1, D] or None
    embed = lambda ids: self.embed(ids) if task is None else self.embed(ids) + task

    down = [None] * n                                           # [B, N_i, D_i]
    down[-1] = self._run(self.pre_layers[-1], n - 1,
                         nn.with_logical_constraint(embed(tokens), ACTIVATION), seg,
                         docs[-1])
    for i in reversed(range(n - 1)):
      p = self._patch(i)
      pooled = self.pools[i](down[i + 1], num_units=sizes[i], children_per_unit=p,
                             parents=None if p else seg.parents(i))
      down[i] = self._run(self.pre_layers[i], i, pooled, seg, docs[i])

    ctx = None
    contexts = []
    for i in range(n):
      first = embed(jnp.full((1, 1), BOS)) if i == n - 1 else self.starts[i]
      x = shift_right(down[i], first)                          # the one-unit shift
      if docs[i] is not None:                                  # documents start afresh
        x = jnp.where(docs[i].first[..., None],
                      jnp.broadcast_to(first, x[:, :1].shape).astype(x.dtype), x)
      if ctx is not None:
        x = x + self._upsample(ctx, i, seg, x, docs)
      ctx = self._run(self.generators[i], i, nn.with_logical_constraint(x, ACTIVATION), seg,
                      docs[i], memory if levels[i].cross_attention else None)
      contexts.append(ctx)

    logits = self.logits(ctx)
    return {"logits": logits, "down": down, "contexts": contexts, "seg": seg, "docs": docs,
            "memory": memory, "task": task}

  def task_vector(self, cond):
    """The task embedding of each row [B, 1, D] (cond['task'] int32 [B]); None
    for a model without tasks (cond['task'] int32 [B, 1]). ValueError when a model
    with tasks gets none."""
    if not self.spec.num_tasks:
      return None
    if not cond or "task" not in cond:
      raise ValueError(f"a model with model.num_tasks={self.spec.num_tasks} needs each row's "
                       "task index, cond['task'] int32 [B, 1] (mgm/data/mixture.py)")
    table = jnp.asarray(self.task_embed, self.spec.compute_dtype)
    return jnp.take(table, cond["task"][:, 0], axis=0)[:, None]

  def token_ce(self, tokens, mask=None, cond=None):
    """The teacher-forced pass to per-token cross-entropies without the [B, T, V]
    logits: ((ce, uniform) [B, T] each, aux terms as `__call__`'s), the
    unembedding run `spec.loss_chunk` positions at a time (mgm/model/loss.py).
    Under jit the forward's unused logits are never computed."""
    out = self.forward(tokens, cond)
    kernel = nn.meta.unbox(self.unembed.variables["params"]["kernel"])
    h = self.final_norm(out["contexts"][-1])
    losses = chunked_token_ce(h, kernel, tokens, self.spec.loss_chunk, self.spec.compute_dtype)
    mask = jnp.ones(tokens.shape, jnp.float32) if mask is None else mask
    return losses, self._aux_terms(tokens, mask, out["seg"], out["contexts"])

  def logits(self, x):
    """Token-level outputs [B, T, D] -> logits [B, T, V] float32."""
    logits = self.unembed(self.final_norm(x)).astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

  def _aux_terms(self, tokens, mask, seg, contexts):
    """{name: value}: per-level auxiliary losses and the unit overflow."""
    terms = {"unit_overflow": seg.overflow}
    for i, head in self.aux_heads.items():
      logits = head(contexts[i]).astype(jnp.float32)          # [B, N_i, V]
      terms[f"aux_{i}"] = unit_loss(self.levels[i].aux_loss, logits, tokens, mask,
                                    seg.unit_of_token[i], seg.max_units[i])
    return terms


def unit_loss(kind, logits, tokens, mask, unit_of_token, num_units):
  """Cross-entropy of level-unit predictions: 'bag' (the unit's byte histogram)
  or 'first' (its first token), averaged over units holding real tokens."""
  vocab = logits.shape[-1]
  per_unit = lambda x: jax.vmap(lambda xb, ub: jax.ops.segment_sum(xb, ub, num_units))(
      x, unit_of_token)
  real = per_unit(mask)                                              # [B, N]
  logp = jax.nn.log_softmax(logits)
  if kind == "bag":
    hist = per_unit(jax.nn.one_hot(tokens, vocab) * mask[..., None])  # [B, N, V]
    ce = -jnp.sum(hist * logp, -1) / jnp.maximum(real, 1.0)
  else:
    index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    first = jax.vmap(lambda ib, ub: jax.ops.segment_min(ib, ub, num_units))(index, unit_of_token)
    first_tok = jnp.take_along_axis(tokens, jnp.clip(first, 0, tokens.shape[1] - 1), axis=1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logp, first_tok)
  weight = (real > 0).astype(jnp.float32)
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def token_loss(logits, tokens, mask):
  """Masked mean cross-entropy in nats per token, and the token count."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
  count = jnp.sum(mask)
  return jnp.sum(ce * mask) / jnp.maximum(count, 1.0), count
