"""Adversarial auxiliary loss (experimental; off unless adversarial.weight > 0).

A discriminator D (a small bidirectional Transformer or LSTM over byte
embeddings) learns to tell real rows from rows whose target bytes are the
decoder's own one-step-ahead samples, relaxed by Gumbel-softmax so that the
generator receives D's gradient (Jang et al. 2017; Kusner & Hernandez-Lobato
2016, "GANs for sequences of discrete elements with the Gumbel-softmax
distribution"). Position t of a fake row is a relaxed sample of the decoder's
teacher-forced distribution at t (its real prefix before it), so the fake
costs no generation loop: one forward pass serves both the language-model loss
and the adversarial one. Positions outside the loss mask (padding, a paired
row's source side) are the real bytes in both rows.

Losses (non-saturating GAN, Goodfellow et al. 2014 §3):
  L_D   = softplus(-D(real)) + softplus(D(stop_gradient(fake)))
  L_adv = softplus(-D(fake)) with D's parameters held fixed
The generator minimises L + adversarial.weight * L_adv; D minimises L_D with
its own AdamW state (`TrainState.adversarial`), checkpointed and resumed with
the rest. Both gradients come from one backward pass of L + w L_adv + L_D, the
stop_gradients keeping each loss to its own parameters.

Not built: professor forcing (Lamb et al. 2016), whose fake hidden states need
the decoder free-running inside the train step.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mgm import kinds
from mgm.data.tokenizer import PAD
from mgm.nn.encoders import EncoderSpec, EncoderStack
from mgm.nn.layers import Embed, Linear, RMSNorm

DISCRIMINATORS = kinds.Registry("discriminator", "adversarial.discriminator",
                                "transformer or lstm")


# config.adversarial (configs/lm.py); a run saved before the section existed had it off.
DEFAULTS = {
    "weight": 0.0,                   # lambda_adv of the generator's loss; 0 = off
    "discriminator": "transformer",  # transformer | lstm (both bidirectional)
    "width": 64,
    "depth": 2,
    "heads": 2,                      # transformer
    "lr": 1e-4,                      # the discriminator's AdamW (its own state), constant
    "gumbel_temperature": 1.0,       # tau of the relaxed samples it is shown
}


@dataclasses.dataclass(frozen=True)
class AdversarialSpec:
  weight: float                  # lambda_adv of the generator's adversarial loss
  discriminator: str             # transformer | lstm (DISCRIMINATORS)
  width: int
  depth: int
  heads: int
  lr: float                      # the discriminator's AdamW learning rate (constant)
  gumbel_temperature: float      # tau of the Gumbel-softmax relaxation
  vocab_size: int


def from_config(config) -> AdversarialSpec | None:
  """config.adversarial -> its spec; None when off (weight 0). Fields are checked
  by mgm/validate.py first."""
  cfg = config.adversarial
  if not cfg.weight:
    return None
  return AdversarialSpec(weight=float(cfg.weight), discriminator=cfg.discriminator,
                         width=cfg.width, depth=cfg.depth, heads=cfg.heads, lr=float(cfg.lr),
                         gumbel_temperature=float(cfg.gumbel_temperature),
                         vocab_size=config.model.vocab_size)


class Transformer(kinds.Kind):
  """Bidirectional pre-norm blocks with RoPE (the text encoder's stack)."""
  name, field = "transformer", "adversarial.discriminator"

  def body(self, spec: AdversarialSpec, x, real):
    enc = EncoderSpec("text", spec.width, spec.depth, heads=spec.heads)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    return EncoderStack(enc, jnp.float32, name="blocks")(x, real, positions)


class LSTM(kinds.Kind):
  """Bidirectional LSTM layers (flax's OptimizedLSTMCell), each direction over
  the row's real positions."""
  name, field = "lstm", "adversarial.discriminator"

  def body(self, spec: AdversarialSpec, x, real):
    lengths = real.sum(1).astype(jnp.int32)
    for i in range(spec.depth):
      cell = lambda: nn.OptimizedLSTMCell(spec.width)
      x = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()), name=f"lstm_{i}")(
          x, seq_lengths=lengths)
      x = Linear((2 * spec.width, spec.width), (None, "embed"), name=f"proj_{i}")(x)
    return x


for _kind in (Transformer, LSTM):
  DISCRIMINATORS.register(_kind)


class Discriminator(nn.Module):
  """rows [B, T, V] (one-hot or relaxed), real [B, T] bool -> logit [B]: > 0 says real."""
  spec: AdversarialSpec

  @nn.compact
  def __call__(self, rows, real):
    kind = DISCRIMINATORS.parse(self.spec.discriminator)
    x = Embed(self.spec.vocab_size, self.spec.width, name="embed")(rows)   # btv,vd->btd
    x = kind.body(self.spec, x, real)
    x = RMSNorm(name="norm")(x)
    weight = real.astype(jnp.float32)[..., None]
    pooled = jnp.sum(x * weight, 1) / jnp.maximum(jnp.sum(weight, 1), 1.0)   # [B, D]
    return Linear((self.spec.width, 1), ("embed", None), name="head")(pooled)[:, 0]


def init_params(spec: AdversarialSpec, rng, batch_shape):
  rows = jnp.zeros((*batch_shape, spec.vocab_size), jnp.float32)
  boxed = Discriminator(spec).init(rng, rows, jnp.ones(batch_shape, bool))["params"]
  return nn.meta.unbox(boxed)


def make_optimizer(spec: AdversarialSpec):
  """The discriminator's own AdamW (b1 0.5, as GANs commonly use) with clipping."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(spec.lr, b1=0.5, b2=0.99))


def gumbel_softmax(key, logits, temperature: float):
  """Relaxed one-hot samples softmax((logits + Gumbel noise) / tau): [..., V]."""
  gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
  return jax.nn.softmax((logits.astype(jnp.float32) + gumbel) / temperature, axis=-1)


def losses(spec: AdversarialSpec, disc_params, logits, tokens, mask, key):
  """(L_adv for the generator, L_D for the discriminator, metrics) of one batch:
  logits [B, T, V] (teacher-forced, predicting tokens [B, T]), mask [B, T] the
  loss positions. Gradients: L_adv reaches the logits only, L_D the
  discriminator's parameters only."""
  disc = Discriminator(spec)
  real_rows = jax.nn.one_hot(tokens, spec.vocab_size, dtype=jnp.float32)
  sampled = gumbel_softmax(key, logits, spec.gumbel_temperature)
  fake_rows = jnp.where(mask[..., None] > 0, sampled, real_rows)
  real = tokens != PAD
  score = lambda params, rows: disc.apply({"params": params}, rows, real)
  d_fake_for_generator = score(jax.lax.stop_gradient(disc_params), fake_rows)
  d_real = score(disc_params, real_rows)
  d_fake = score(disc_params, jax.lax.stop_gradient(fake_rows))
  generator = jnp.mean(jax.nn.softplus(-d_fake_for_generator))
  discriminator = jnp.mean(jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake))
  accuracy = 0.5 * jnp.mean((d_real > 0).astype(jnp.float32) + (d_fake < 0).astype(jnp.float32))
  return generator, discriminator, {"adv_generator": generator, "adv_discriminator": discriminator,
                                    "adv_accuracy": accuracy}
