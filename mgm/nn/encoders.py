"""Encoder kinds (`model.encoders[i].kind`): what turns a conditioning input
into a memory [B, M, width] with a mask [B, M] (True: a real slot) that the
decoder's cross-attention reads, after the fusion (mgm/nn/fusion.py).

  text       byte embedding, then `depth` bidirectional pre-norm Transformer
             blocks over the source (rotary positions from the first byte,
             padding keys masked), a final RMSNorm; optional fixed-patch
             pooling: the masked mean of each `patch` bytes is one memory
             vector (M = max_len / patch), real iff any of its bytes is
  text_lstm  byte embedding, `depth` bidirectional LSTM layers (flax's
             OptimizedLSTMCell; the backward direction starts at the last real
             byte), both directions projected to width; the same pooling
  image_vit  ViT (Dosovitskiy et al. 2021): patches of `patch` x `patch`
             pixels embedded, fixed 2-D sincos positions (big_vision's
             posemb_sincos_2d), `depth` bidirectional Transformer blocks;
             M = (image_size / patch)^2, row-major
  image_cnn  a small pre-activation ResNet (He et al. 2016): a stem conv
             (3x3, or with patch > 1 a patch x patch conv of stride patch),
             `depth` stages of two basic blocks with GroupNorm (no BatchNorm
             state), CNN_BASE * 2^s channels at stage s, stride 2 between
             stages, a 1x1 projection to width; the final grid is the memory

Inputs (`Encoder.input`): "source", int32 byte ids [B, S] with S == max_len
and PAD (256) after the source; or "image", uint8 pixels [B, H, W, C].
Every parameter carries logical axes, activations are constrained to
("batch", "length", "embed") like the decoder's.

Adding a kind: one class here, registered in `ENCODERS`, and its module.
"""
import abc
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgm.data.tokenizer import PAD, VOCAB_SIZE
from mgm.errors import ConfigError
from mgm.kinds import Kind, KindError, Registry
from mgm.nn import mixers
from mgm.nn.attention import rope
from mgm.nn.layers import Dtype, Embed, Linear, RMSNorm
from mgm.nn.transformer import ACTIVATION, MLP

ENCODERS = Registry("encoder", "kind", "text, text_lstm, image_vit or image_cnn")

CNN_BASE = 16          # image_cnn: channels of the first stage (doubling per stage)
CNN_BLOCKS = 2         # image_cnn: basic blocks per stage (as ResNet-18)
CNN_GROUPS = 8         # image_cnn: GroupNorm groups
ROPE_BASE = 10_000.0


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """One encoder, hashable (flax modules read it); `kind` is parsed once into
  `encoder_kind`. `patch`: text kinds, source bytes pooled into one memory
  vector (0 or 1: one per byte); image_vit, the patch side in pixels;
  image_cnn, the stem's stride (0 or 1: a 3x3 stem at full resolution)."""
  kind: str                   # text | text_lstm | image_vit | image_cnn
  width: int
  depth: int                  # Transformer blocks / LSTM layers / residual stages
  heads: int = 4              # Transformer kinds
  patch: int = 0
  max_len: int = 0            # text kinds: source length in bytes, EOS included
  image_size: int = 0         # image kinds: H = W in pixels
  channels: int = 3           # image kinds
  mlp_ratio: int = 4
  encoder_kind: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "encoder_kind", ENCODERS.parse(self.kind))


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(EncoderSpec) if f.init)


def encoder_from_config(cfg, i: int) -> EncoderSpec:
  """`config.model.encoders[i]` -> its EncoderSpec; ConfigError naming
  `model.encoders[i].<field>` and the fix for anything that cannot work."""
  field = f"model.encoders[{i}]"
  unknown = sorted(set(cfg.keys()) - set(SPEC_FIELDS))
  if unknown:
    raise ConfigError(f"{field}.{unknown[0]}", f"is not an encoder field; encoder fields "
                      f"are {sorted(SPEC_FIELDS)}")
  for name in ("kind", "width", "depth"):
    if name not in cfg:
      raise ConfigError(f"{field}.{name}", "is missing; every encoder needs kind, width "
                        "and depth")
  for name in ("width", "depth", "heads", "channels", "mlp_ratio"):
    if name in cfg and not _is_int(cfg[name], 1):
      raise ConfigError(f"{field}.{name}", f"must be a positive integer, got {cfg[name]!r}")
  for name in ("patch", "max_len", "image_size"):
    if name in cfg and not _is_int(cfg[name], 0):
      raise ConfigError(f"{field}.{name}", f"must be an integer >= 0, got {cfg[name]!r}")
  try:
    spec = EncoderSpec(**{k: cfg[k] for k in cfg.keys()})
    spec.encoder_kind.check(spec)
  except KindError as e:
    raise ConfigError(f"{field}.{e.field}", str(e)) from None
  return spec


def _is_int(value, least: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= least


class Encoder(Kind, abc.ABC):
  """Base of the encoder kinds. `input`: 'source' or 'image' (module doc)."""
  field: ClassVar[str] = "kind"
  input: ClassVar[str]

  def check(self, spec: EncoderSpec) -> None:
    """KindError(field, problem and fix) for a spec this kind cannot run."""

  @abc.abstractmethod
  def module(self, spec: EncoderSpec, dtype, name: str) -> nn.Module:
    """module(x) -> (memory [B, M, spec.width] in dtype, mask [B, M] bool)."""

  @abc.abstractmethod
  def memory_len(self, spec: EncoderSpec) -> int:
    """M, the memory's (static) length."""

  @abc.abstractmethod
  def flops(self, spec: EncoderSpec) -> float:
    """Forward FLOPs per example (2 per multiply-add; matmuls, convolutions,
    attention scores and values), as mgm/flops.py counts the decoder's."""


def block_flops(width: int, mlp_ratio: int, positions: int, keys: int) -> float:
  """Forward FLOPs of one bidirectional block: q, k, v, o projections, the
  scores and values over `keys` keys, and the MLP, at `positions` positions."""
  return positions * (2 * 4 * width * width + 2 * 2 * width * keys
                      + 2 * 2 * mlp_ratio * width * width)


def _check_heads(spec, rotary: bool):
  if spec.width % spec.heads:
    raise KindError("heads", f"width {spec.width} is not divisible by heads {spec.heads}; "
                    "choose heads dividing the width")
  if rotary and (spec.width // spec.heads) % 2:
    raise KindError("heads", f"head dimension {spec.width // spec.heads} must be even for "
                    "rotary embeddings; choose heads so that width / heads is even")


def _check_text(spec):
  if spec.max_len <= 0:
    raise KindError("max_len", f"a {spec.kind} encoder needs the source length in bytes "
                    "(EOS included), e.g. max_len=256")
  if spec.patch > 1 and spec.max_len % spec.patch:
    raise KindError("patch", f"max_len {spec.max_len} is not divisible by patch "
                    f"{spec.patch}; use a divisor of max_len, or 0 for one vector per byte")


def _check_image(spec):
  if spec.image_size <= 0:
    raise KindError("image_size", f"a {spec.kind} encoder needs the image side in pixels "
                    "(H = W), e.g. image_size=32")


@ENCODERS.register
@dataclasses.dataclass(frozen=True)
class Text(Encoder):
  name: ClassVar[str] = "text"
  input: ClassVar[str] = "source"

  def check(self, spec):
    _check_text(spec)
    _check_heads(spec, rotary=True)

  def module(self, spec, dtype, name):
    return TextTransformer(spec, dtype, name=name)

  def memory_len(self, spec):
    return spec.max_len // max(spec.patch, 1)

  def flops(self, spec):
    return spec.depth * block_flops(spec.width, spec.mlp_ratio, spec.max_len, spec.max_len)


@ENCODERS.register
@dataclasses.dataclass(frozen=True)
class TextLSTM(Encoder):
  name: ClassVar[str] = "text_lstm"
  input: ClassVar[str] = "source"

  def check(self, spec):
    _check_text(spec)

  def module(self, spec, dtype, name):
    return BiLSTM(spec, dtype, name=name)

  def memory_len(self, spec):
    return spec.max_len // max(spec.patch, 1)

  def flops(self, spec):
    w = spec.width
    layers = sum(2 * 2 * 4 * w * ((w if i == 0 else 2 * w) + w)   # 2 directions, 4 gates
                 for i in range(spec.depth))
    return spec.max_len * (layers + 2 * 2 * w * w)                 # + the projection


@ENCODERS.register
@dataclasses.dataclass(frozen=True)
class ImageViT(Encoder):
  name: ClassVar[str] = "image_vit"
  input: ClassVar[str] = "image"

  def check(self, spec):
    _check_image(spec)
    if spec.patch <= 0 or spec.image_size % spec.patch:
      raise KindError("patch", f"image_vit needs a patch side dividing image_size "
                      f"{spec.image_size}, got patch={spec.patch}; e.g. patch=4")
    if spec.width % 4 or spec.width < 8:
      raise KindError("width", f"2-D sincos positions need a width divisible by 4 (>= 8), "
                      f"got {spec.width}")
    _check_heads(spec, rotary=False)

  def module(self, spec, dtype, name):
    return ViT(spec, dtype, name=name)

  def memory_len(self, spec):
    return (spec.image_size // spec.patch) ** 2

  def flops(self, spec):
    m = self.memory_len(spec)
    embed = 2 * spec.patch * spec.patch * spec.channels * spec.width * m
    return embed + spec.depth * block_flops(spec.width, spec.mlp_ratio, m, m)


@ENCODERS.register
@dataclasses.dataclass(frozen=True)
class ImageCNN(Encoder):
  name: ClassVar[str] = "image_cnn"
  input: ClassVar[str] = "image"

  def check(self, spec):
    _check_image(spec)
    stride, shrink = max(spec.patch, 1), 2 ** (spec.depth - 1)
    if spec.image_size % (stride * shrink):
      raise KindError("image_size", f"{spec.image_size} must be divisible by the stem stride "
                      f"(patch) {stride} x 2^(depth-1) = {stride * shrink}; change image_size,"
                      " patch or depth")

  def module(self, spec, dtype, name):
    return ResNet(spec, dtype, name=name)

  def memory_len(self, spec):
    return cnn_side(spec, spec.depth - 1) ** 2

  def flops(self, spec):
    stride = max(spec.patch, 1)
    kernel = 3 if stride == 1 else stride
    side = cnn_side(spec, 0)
    total = 2 * kernel * kernel * spec.channels * CNN_BASE * side * side     # stem
    c_in = CNN_BASE
    for s in range(spec.depth):
      c, area = CNN_BASE * 2 ** s, cnn_side(spec, s) ** 2
      total += 2 * 9 * (c_in + c) * c * area                   # first block's two convs
      total += (2 * c_in * c * area) if c_in != c else 0       # its projected shortcut
      total += (CNN_BLOCKS - 1) * 2 * 2 * 9 * c * c * area     # the other blocks
      c_in = c
    return total + 2 * c_in * spec.width * cnn_side(spec, spec.depth - 1) ** 2


def cnn_side(spec, stage: int) -> int:
  """image_cnn: the grid's side in stage `stage` (stride 2 between stages)."""
  return spec.image_size // max(spec.patch, 1) // 2 ** stage


# -- modules ------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
  """Bidirectional multi-head attention of queries x [B, T, D] over a memory
  [B, M, E] (self-attention: memory is x) where `mask` [B, M] is True (real
  keys); rotary positions when `positions` [B, T] (== the keys') are given.
  Returns [B, T, width]."""
  width: int
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, mask, positions=None):
    head_dim = self.width // self.heads
    proj = lambda name, y: Linear((y.shape[-1], self.heads, head_dim), ("embed", "heads", "kv"),
                                  dtype=self.dtype, name=name)(y)
    q, k, v = proj("query", x), proj("key", memory), proj("value", memory)   # [B, *, N, H]
    if positions is not None:
      q, k = rope(q, positions, ROPE_BASE), rope(k, positions, ROPE_BASE)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Linear((self.heads, head_dim, self.width), ("heads", "kv", "embed"),
                  fan_in_axes=(0, 1), dtype=self.dtype, name="out")(out)


class EncoderStack(nn.Module):
  """`depth` pre-norm blocks x + Attn(Norm(x)), + MLP(Norm(x)), bidirectional
  over the real keys, then a final RMSNorm: x [B, T, D], mask [B, T] -> [B, T, D]."""
  spec: EncoderSpec
  dtype: Dtype

  @nn.compact
  def __call__(self, x, mask, positions=None):
    spec = self.spec
    for i in range(spec.depth):
      h = RMSNorm(dtype=self.dtype, name=f"attn_norm_{i}")(x)
      x = x + MultiHeadAttention(spec.width, spec.heads, self.dtype, name=f"attn_{i}")(
          h, h, mask, positions)
      h = RMSNorm(dtype=self.dtype, name=f"mlp_norm_{i}")(x)
      x = x + MLP(spec.width, spec.width * spec.mlp_ratio, self.dtype, name=f"mlp_{i}")(h)
      x = nn.with_logical_constraint(x, ACTIVATION)
    return RMSNorm(dtype=self.dtype, name="final_norm")(x)


def patch_pool(x, real, patch: int):
  """Masked mean of each `patch` positions: x [B, S, D], real [B, S] ->
  ([B, S/patch, D], [B, S/patch] real iff any of its positions is); padded
  slots are zeros. patch 0 or 1: x itself (padding zeroed)."""
  x = jnp.where(real[..., None], x, 0).astype(x.dtype)
  if patch <= 1:
    return x, real
  b, s, d = x.shape
  xs, ms = x.reshape(b, s // patch, patch, d), real.reshape(b, s // patch, patch)
  count = ms.sum(-1, keepdims=True).astype(jnp.float32)
  mean = xs.astype(jnp.float32).sum(2) / jnp.maximum(count, 1.0)
  return mean.astype(x.dtype), ms.any(-1)


def _check_input(spec, x, shape, dtype):
  """ValueError unless x is dtype [B, *shape] (the data's checks name the field first)."""
  if tuple(x.shape[1:]) != shape or x.dtype != dtype:
    want = ", ".join(map(str, shape))
    raise ValueError(f"encoder {spec.kind} takes {jnp.dtype(dtype)} [B, {want}], "
                     f"got {x.dtype} {list(x.shape)}")


class TextTransformer(nn.Module):
  """The `text` kind: source [B, S] int32 -> (memory [B, M, width], mask [B, M])."""
  spec: EncoderSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, source):
    spec = self.spec
    _check_input(spec, source, (spec.max_len,), jnp.int32)
    real = source != PAD
    x = Embed(VOCAB_SIZE, spec.width, self.dtype, name="embed")(source)
    x = nn.with_logical_constraint(x, ACTIVATION)
    positions = jnp.broadcast_to(jnp.arange(source.shape[1]), source.shape)
    x = EncoderStack(spec, self.dtype, name="blocks")(x, real, positions)
    memory, mask = patch_pool(x, real, spec.patch)
    return nn.with_logical_constraint(memory, ACTIVATION), mask


class BiLSTM(nn.Module):
  """The `text_lstm` kind: source [B, S] int32 -> (memory [B, M, width], mask [B, M])."""
  spec: EncoderSpec
  dtype: Dtype = jnp.float32

  def _cell(self):
    part = nn.with_logical_partitioning   # one sharded axis, as mgm/nn/mixers.py says why
    return nn.OptimizedLSTMCell(
        self.spec.width, dtype=self.dtype,
        kernel_init=part(nn.initializers.lecun_normal(), ("embed", None)),
        recurrent_kernel_init=part(nn.initializers.orthogonal(), ("embed", None)),
        bias_init=part(nn.initializers.zeros_init(), (None,)))

  @nn.compact
  def __call__(self, source):
    spec = self.spec
    _check_input(spec, source, (spec.max_len,), jnp.int32)
    real = source != PAD
    lengths = real.sum(1).astype(jnp.int32)
    x = Embed(VOCAB_SIZE, spec.width, self.dtype, name="embed")(source)
    # a loop XLA's cost analysis counts once: unrolled up to mixers.UNROLL_UP_TO steps
    unroll = spec.max_len if spec.max_len <= mixers.UNROLL_UP_TO else 1
    for i in range(spec.depth):
      # the backward RNN runs reversed within each row's `lengths` (flax flips
      # each sequence up to its length), so it starts at the last real byte
      x = nn.Bidirectional(nn.RNN(self._cell(), unroll=unroll), nn.RNN(self._cell(), unroll=unroll),
                           name=f"lstm_{i}")(x, seq_lengths=lengths)
      x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "length", None))
    x = Linear((2 * spec.width, spec.width), ("mlp", "embed"), dtype=self.dtype, name="proj")(x)
    memory, mask = patch_pool(x, real, spec.patch)
    return nn.with_logical_constraint(memory, ACTIVATION), mask


def pixels_to_float(image, dtype):
  """uint8 [B, H, W, C] -> [-1, 1] in dtype."""
  return (image.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0):
  """Fixed 2-D sincos positions [h * w, width], row-major (big_vision's
  posemb_sincos_2d): a quarter of the width each for sin/cos of x and y."""
  y, x = jnp.mgrid[:h, :w]
  omega = 1.0 / temperature ** (jnp.arange(width // 4) / (width // 4 - 1))
  y, x = y.reshape(-1, 1) * omega, x.reshape(-1, 1) * omega
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class ViT(nn.Module):
  """The `image_vit` kind: image [B, H, W, C] uint8 -> (memory [B, M, width], mask)."""
  spec: EncoderSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image):
    spec, p = self.spec, self.spec.patch
    _check_input(spec, image, (spec.image_size, spec.image_size, spec.channels), jnp.uint8)
    b, n = image.shape[0], spec.image_size // p
    x = pixels_to_float(image, self.dtype).reshape(b, n, p, n, p, spec.channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, p * p * spec.channels)
    x = Linear((p * p * spec.channels, spec.width), (None, "embed"), dtype=self.dtype,
               name="patch_embed")(x)
    x = x + posemb_sincos_2d(n, n, spec.width).astype(self.dtype)
    x = nn.with_logical_constraint(x, ACTIVATION)
    mask = jnp.ones((b, n * n), bool)
    return EncoderStack(spec, self.dtype, name="blocks")(x, mask), mask


def _conv(features, kernel, stride, dtype, name):
  padding = "SAME" if kernel > stride else "VALID"
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=padding, use_bias=False,
                 dtype=dtype, name=name, kernel_init=nn.with_logical_partitioning(
                     nn.initializers.lecun_normal(), (None, None, None, None)))


def _norm(dtype, name):
  part = nn.with_logical_partitioning
  return nn.GroupNorm(num_groups=CNN_GROUPS, dtype=dtype, name=name,
                      scale_init=part(nn.initializers.ones, (None,)),
                      bias_init=part(nn.initializers.zeros, (None,)))


class BasicBlock(nn.Module):
  """Pre-activation ResNet basic block: x + conv(relu(GN(conv(relu(GN(x)))))),
  the shortcut a strided 1x1 conv where the shape changes. [B, h, w, c]."""
  features: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(_norm(self.dtype, "norm_1")(x))
    shortcut = x
    if self.stride > 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, self.dtype, "shortcut")(h)
    h = _conv(self.features, 3, self.stride, self.dtype, "conv_1")(h)
    h = nn.relu(_norm(self.dtype, "norm_2")(h))
    h = _conv(self.features, 3, 1, self.dtype, "conv_2")(h)
    return nn.with_logical_constraint(shortcut + h, ("batch", None, None, None))


class ResNet(nn.Module):
  """The `image_cnn` kind: image [B, H, W, C] uint8 -> (memory [B, h*w, width], mask)."""
  spec: EncoderSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image):
    spec = self.spec
    _check_input(spec, image, (spec.image_size, spec.image_size, spec.channels), jnp.uint8)
    stride = max(spec.patch, 1)
    x = pixels_to_float(image, self.dtype)
    x = _conv(CNN_BASE, 3 if stride == 1 else stride, stride, self.dtype, "stem")(x)
    for s in range(spec.depth):
      for j in range(CNN_BLOCKS):
        x = BasicBlock(CNN_BASE * 2 ** s, 2 if s and not j else 1, self.dtype,
                       name=f"stage_{s}_block_{j}")(x)
    x = nn.relu(_norm(self.dtype, "final_norm")(x))
    b, h, w, c = x.shape
    x = Linear((c, spec.width), (None, "embed"), dtype=self.dtype, name="proj")(
        x.reshape(b, h * w, c))
    return nn.with_logical_constraint(x, ACTIVATION), jnp.ones((b, h * w), bool)
