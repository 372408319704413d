"""Train state, pure train/eval steps, and the optimizer."""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgm import adversarial as adv_lib
from mgm.model.lm import LM, conditioning, example_cond, token_loss
from mgm.model.loss import masked_mean


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds of training (with the data iterator's position).

  The step uses no randomness; anything random around it (samples) is keyed by
  seed and step, so a resumed run draws the same numbers without a saved key.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  skipped_steps: jax.Array        # int32: updates refused so far (non-finite, unit overflow)
  nonfinite_in_a_row: jax.Array   # int32: consecutive non-finite steps up to now
  adversarial: Any = None         # {"params", "opt_state"} of the discriminator
                                  # (mgm/adversarial.py), None when it is off


def make_optimizer(train_cfg):
  """AdamW, linear warmup then cosine decay to lr*min_lr_ratio, global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.lr * train_cfg.min_lr_ratio)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip),
      optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=_decay_mask))
  return tx, schedule


def _decay_mask(params):
  """Weight decay on matrices only (not norm scales)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def init_params(model: LM, rng, batch_shape):
  """Boxed (logically partitioned) parameters for tokens of `batch_shape` (and the
  encoders' inputs of as many rows)."""
  cond = example_cond(model.spec, batch_shape[0])
  return model.init(rng, jnp.zeros(batch_shape, jnp.int32), return_aux=True,
                    cond=cond)["params"]


def init_state(model: LM, tx, rng, batch_shape, adversarial=None) -> TrainState:
  """The state at step 0; with an AdversarialSpec, its discriminator's too (from a
  key folded off `rng`, so the model's parameters do not depend on it)."""
  params = nn.meta.unbox(init_params(model, rng, batch_shape))
  zero = jnp.zeros((), jnp.int32)
  disc = None
  if adversarial is not None:
    disc_params = adv_lib.init_params(adversarial, jax.random.fold_in(rng, 1), batch_shape)
    disc = {"params": disc_params,
            "opt_state": adv_lib.make_optimizer(adversarial).init(disc_params)}
  return TrainState(step=zero, params=params, opt_state=tx.init(params), skipped_steps=zero,
                    nonfinite_in_a_row=zero, adversarial=disc)


def _token_terms(params, model: LM, batch, label_smoothing: float):
  """(logits [B, T, V] or None, aux, plain token CE, token count, the CE trained
  on). With `model.spec.loss_chunk` the logits are made that many positions at
  a time, never all at once (LM.token_ce), and not returned."""
  if model.spec.loss_chunk:
    (ce, uniform), aux = model.apply({"params": params}, batch["tokens"], batch["mask"],
                                     cond=conditioning(batch), method=LM.token_ce)
    token_ce, count = masked_mean(ce, batch["mask"])
    total = token_ce
    if label_smoothing:
      total = masked_mean((1 - label_smoothing) * ce + label_smoothing * uniform,
                          batch["mask"])[0]
    return None, aux, token_ce, count, total
  logits, aux = model.apply({"params": params}, batch["tokens"], batch["mask"],
                            return_aux=True, cond=conditioning(batch))
  token_ce, count = token_loss(logits, batch["tokens"], batch["mask"])
  total = token_ce
  if label_smoothing:
    total = smoothed_token_loss(logits, batch["tokens"], batch["mask"], label_smoothing)
  return logits, aux, token_ce, count, total


def loss_fn(params, model: LM, batch, label_smoothing: float = 0.0, adversarial=None,
            distill=None):
  """L = token cross-entropy (with `label_smoothing`, Szegedy et al. 2016 §7, if
  > 0) + sum_i lambda_i L_i (per-level auxiliary losses). The token loss is over
  the batch's mask: a paired batch's target tokens only. metrics['loss'] is the
  plain cross-entropy whatever the smoothing.

  `adversarial`: (AdversarialSpec, discriminator params, PRNG key) adds
  weight * L_adv + L_D (mgm/adversarial.py; each reaches its own parameters).
  `distill` (mgm/distill.py, Distill.bind): (token loss, logits, batch, unit
  overflow) -> (token loss blended with the teachers' KL term, metrics). Both
  read the logits: validation refuses them with model.loss_chunk."""
  logits, aux, token_ce, count, total = _token_terms(params, model, batch, label_smoothing)
  if distill is not None:
    total, taught = distill(total, logits, batch, aux["unit_overflow"])
    aux = {**aux, **taught}
  for i, level in enumerate(model.spec.levels):
    if level.aux_loss:
      total = total + level.aux_weight * aux[f"aux_{i}"]
  if adversarial is not None:
    spec, disc_params, key = adversarial
    generator, discriminator, adv_metrics = adv_lib.losses(
        spec, disc_params, logits, batch["tokens"], batch["mask"], key)
    aux = {**aux, **adv_metrics}
    total = total + spec.weight * generator + discriminator
  return total, {"loss": token_ce, "tokens": count, **aux}


def mixture_loss_fn(params, model: LM, batch, tasks: tuple, label_smoothing: float = 0.0,
                    totals=None, distill=None):
  """A task mixture's loss (mgm/data/mixture.py): L = sum_i lambda_i L_i + the
  per-level auxiliary losses, L_i the token cross-entropy (smoothed as in
  `loss_fn`) averaged over task i's target tokens. `tasks`: ((name, lambda_i),
  ...) in the order of batch['task'] [B, 1]'s indices. With `distill` (a bound
  mgm/distill.py term) L_i = (1 - alpha) CE_i + alpha tau^2 KL_i, both over task
  i's target tokens; metrics gain distill_kl (over all tokens).

  `totals` = (all tokens, per-task tokens [K]) of the whole global batch when this
  batch is one micro-batch of it: every term is then this micro-batch's share of
  the whole batch's value (sums over it divided by the whole batch's counts, the
  auxiliary losses weighted by its share of tokens), so the shares and their
  gradients add up exactly over micro-batches. Metrics: loss (plain CE over all
  tokens), tokens, loss_<name> (plain L_i), tokens_<name>, aux_*, unit_overflow."""
  logits, aux = model.apply({"params": params}, batch["tokens"], batch["mask"],
                            return_aux=True, cond=conditioning(batch))
  tokens, mask = batch["tokens"], batch["mask"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)    # [B, T]
  train_ce = ce
  if label_smoothing:
    labels = optax.smooth_labels(jax.nn.one_hot(tokens, logits.shape[-1]), label_smoothing)
    train_ce = optax.softmax_cross_entropy(logits, labels)
  onehot = jax.nn.one_hot(batch["task"][:, 0], len(tasks), dtype=jnp.float32)   # [B, K]
  per_task = lambda x: jnp.einsum("bt,bk->k", x * mask, onehot)           # [K]
  count, task_count = jnp.sum(mask), per_task(jnp.ones_like(ce))
  all_count, all_task = (count, task_count) if totals is None else totals
  den, share = jnp.maximum(all_task, 1.0), count / jnp.maximum(all_count, 1.0)
  lam = jnp.asarray([w for _, w in tasks], jnp.float32)
  if distill is not None:
    kl, teacher_overflow = distill.token_kl(logits, batch)               # [B, T]
    train_ce = distill.distill.blend(train_ce, kl)
    aux = {**aux, "unit_overflow": aux["unit_overflow"] + teacher_overflow,
           "distill_kl": jnp.sum(kl * mask) / jnp.maximum(count, 1.0)}
  total = jnp.sum(lam * per_task(train_ce) / den)
  for i, level in enumerate(model.spec.levels):
    if level.aux_loss:
      total = total + level.aux_weight * share * aux[f"aux_{i}"]
  plain = per_task(ce) / den
  metrics = {"loss": jnp.sum(ce * mask) / jnp.maximum(all_count, 1.0), "tokens": count,
             **{f"loss_{name}": plain[k] for k, (name, _) in enumerate(tasks)},
             **{f"tokens_{name}": task_count[k] for k, (name, _) in enumerate(tasks)},
             **{k: v if k == "unit_overflow" else share * v for k, v in aux.items()}}
  return total, metrics


def _mixture_grads(params, model: LM, batch, accum: int, tasks, label_smoothing, distill):
  """accumulated_grads of a task mixture: micro-batch shares (mixture_loss_fn) summed."""
  grad_fn = jax.value_and_grad(functools.partial(
      mixture_loss_fn, tasks=tasks, label_smoothing=label_smoothing, distill=distill),
      has_aux=True)
  if accum == 1:
    (total, metrics), grads = grad_fn(params, model, batch)
    return total, metrics, grads
  onehot = jax.nn.one_hot(batch["task"][:, 0], len(tasks), dtype=jnp.float32)
  totals = (jnp.sum(batch["mask"]), jnp.einsum("bt,bk->k", batch["mask"], onehot))
  micro = micro_batches(batch, accum)

  def add(carry, one):
    return jax.tree.map(jnp.add, carry, grad_fn(params, model, one, totals=totals)), None

  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(lambda: grad_fn(params, model, first, totals=totals))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  ((total, metrics), grads), _ = jax.lax.scan(add, zeros, micro)
  return total, metrics, grads


# Metrics that add up over micro-batches; the others are token-weighted means.
SUMMED_METRICS = ("tokens", "unit_overflow")


def micro_batches(batch, accum: int):
  """[B, ...] -> [accum, B/accum, ...]; micro-batch a holds rows a, a+accum, ...,
  so each device's rows of the global batch split evenly over the micro-batches
  (no data moves between devices)."""
  def split(x):
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def smoothed_token_loss(logits, tokens, mask, smoothing: float):
  """Masked mean cross-entropy against (1 - smoothing) one-hot + smoothing uniform."""
  vocab = logits.shape[-1]
  labels = optax.smooth_labels(jax.nn.one_hot(tokens, vocab), smoothing)
  ce = optax.softmax_cross_entropy(logits, labels)
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def accumulated_grads(params, model: LM, batch, accum: int, label_smoothing: float = 0.0,
                      adversarial=None, tasks: tuple = (), distill=None):
  """Loss, metrics and gradients of the global batch, computed `accum` micro-batches
  at a time (activation memory / accum). Each micro-batch is weighted by its share
  of the batch's tokens, so the token loss and its gradient equal one pass's.
  `adversarial` (AdversarialSpec, discriminator params, key): the gradients are
  (the model's, the discriminator's); every micro-batch draws its Gumbel noise
  from the same key (its rows differ). `tasks` ((name, lambda_i), ...): a task
  mixture's loss (mixture_loss_fn; validation refuses it with `adversarial`).
  `distill`: the teachers' term bound to their parameters (loss_fn)."""
  if tasks:
    return _mixture_grads(params, model, batch, accum, tasks, label_smoothing, distill)

  def objective(trainable, one):
    if adversarial is None:
      return loss_fn(trainable, model, one, label_smoothing, distill=distill)
    spec, _, key = adversarial
    return loss_fn(trainable[0], model, one, label_smoothing, (spec, trainable[1], key),
                   distill)

  grad_fn = jax.value_and_grad(lambda trainable, _, one: objective(trainable, one), has_aux=True)
  params = params if adversarial is None else (params, adversarial[1])
  if accum == 1:
    (total, metrics), grads = grad_fn(params, model, batch)
    return total, metrics, grads
  micro = micro_batches(batch, accum)
  all_tokens = jnp.maximum(jnp.sum(batch["mask"]), 1.0)

  def add(carry, one):
    (total, metrics), grads = grad_fn(params, model, one)
    weight = metrics["tokens"] / all_tokens
    metrics = {k: v if k in SUMMED_METRICS else weight * v for k, v in metrics.items()}
    weighted = ((weight * total, metrics), jax.tree.map(lambda g: weight * g, grads))
    return jax.tree.map(jnp.add, carry, weighted), None

  shapes = jax.eval_shape(lambda: grad_fn(params, model, jax.tree.map(lambda x: x[0], micro)))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  ((total, metrics), grads), _ = jax.lax.scan(add, zeros, micro)
  return total, metrics, grads


def make_train_step(model: LM, tx, grad_accum: int = 1, label_smoothing: float = 0.0,
                    adversarial=None, seed: int = 0, tasks: tuple = (), distill=None):
  """(state, batch) -> (state, metrics); pure, for jax.jit. `grad_accum` > 1 runs
  the batch as that many micro-batches and applies one update. `adversarial` (an
  AdversarialSpec) also updates the discriminator in `state.adversarial`, with
  Gumbel noise keyed by (`seed`, step): a resumed run draws the same noise.
  `tasks`: a task mixture's ((name, lambda_i), ...) (mixture_loss_fn). With
  `distill` (mgm/distill.py Distill) the step is (state, batch, teacher params):
  frozen, an argument rather than constants of the program."""
  disc_tx = None if adversarial is None else adv_lib.make_optimizer(adversarial)

  def train_step(state: TrainState, batch, teacher_params=None):
    term = distill.bind(teacher_params) if distill is not None else None
    adv = None
    if adversarial is not None:
      key = jax.random.fold_in(jax.random.key(seed), state.step)
      adv = (adversarial, state.adversarial["params"], key)
    total, metrics, grads = accumulated_grads(state.params, model, batch, grad_accum,
                                              label_smoothing, adv, tasks, term)
    grads, disc_grads = (grads, None) if adv is None else grads
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.tree.norm(grads)
    # Refuse the update (keep params and optimizer state) when units overflow
    # their static maximum (they would mix contexts) or the loss or gradient is
    # not finite; the loop stops the run on overflow or too many non-finite in a row.
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    if adv is not None:
      finite = finite & jnp.isfinite(optax.tree.norm(disc_grads))
    ok = (metrics["unit_overflow"] == 0) & finite
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    params = keep(optax.apply_updates(state.params, updates), state.params)
    opt_state = keep(opt_state, state.opt_state)
    disc = state.adversarial
    if adv is not None:
      disc_updates, disc_opt = disc_tx.update(disc_grads, disc["opt_state"], disc["params"])
      disc = keep({"params": optax.apply_updates(disc["params"], disc_updates),
                   "opt_state": disc_opt}, disc)
    skipped = state.skipped_steps + (~ok).astype(jnp.int32)
    in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
    metrics = {**metrics, "total_loss": total, "grad_norm": grad_norm,
               "skipped_steps": skipped, "nonfinite_in_a_row": in_a_row}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      skipped_steps=skipped, nonfinite_in_a_row=in_a_row,
                      adversarial=disc), metrics

  return train_step


def make_eval_step(model: LM):
  """(params, batch) -> (sum of nats, token count): sums, so batches add up exactly."""

  def eval_step(params, batch):
    logits = model.apply({"params": params}, batch["tokens"], cond=conditioning(batch))
    loss, count = token_loss(logits, batch["tokens"], batch["mask"])
    return loss * count, count

  return eval_step


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
