"""Hashable model description built from (and validated against) `config.model`.

Flax modules need hashable attributes; `ConfigDict` is not. `ModelSpec` is the
frozen view the modules read. Every model-shape error is raised here, naming
the config field and the fix, before anything is compiled.
"""
import dataclasses

from typing import Any

import jax
import jax.numpy as jnp

from mgm.errors import ConfigError
from mgm.kinds import KindError
from mgm.model import segment
from mgm.model.units import UNITS
from mgm.nn.attention import ATTENTION_IMPLS
from mgm.nn.mixers import MIXERS
from mgm.nn.pooling import POOLING
from mgm.nn.span import SPANS
from mgm.nn.transformer import REMAT_POLICIES
from mgm.nn.upsample import UPSAMPLING

AUX_LOSSES = ("", "bag", "first")
PACKINGS = ("document_mask", "none")    # data.packing (mgm/model/lm.py)


def field_defaults(spec_class) -> dict:
  """{field: default} of a spec dataclass's fields that have one."""
  return {f.name: f.default for f in dataclasses.fields(spec_class)
          if f.default is not dataclasses.MISSING}


@dataclasses.dataclass(frozen=True)
class LevelSpec:
  """One level. Coarse levels (all but the last) also say how their units are
  made: `units` (segmenter), `max_len` (tokens; forces a boundary), `max_units`
  (static bound per sequence; derived for fixed units), `pool` (children ->
  unit vector), `upsample` (unit context -> its children: `repeat` gives every
  child the same projection, `linear` one projection per child position, as
  Hourglass's linear upsampling, fixed units only; `attention[:repeat|:linear]`
  each child cross-attends to the contexts of its document's units up to its
  own, Hourglass's attention upsampling, plus the named one) and an optional auxiliary
  loss on their context vectors. `mixer` is what carries information along
  the level (attention, lstm, gru, conv:K).

  The kind fields (span, units, pool, upsample, mixer) are config strings;
  each is parsed once, here, into its registered kind object (`span_kind`,
  `units_kind`, `pool_kind`, `upsample_kind`, `mixer_kind`), which the modules,
  the decoder and the FLOPs count use. A bad string raises KindError naming
  the field.

  `cross_attention` adds a cross-attention sub-layer into the fused memory of
  the model's encoders to every block of the level's generator (not its
  pre-layers): conditioned on the coarsest level only, the cost is a few
  queries per sentence (mgm/nn/cross_attention.py)."""
  width: int
  depth: int
  heads: int
  span: str = "full"           # full | parent | window:W       (mgm/nn/span.py)
  pre_layers: int = 0          # down-path layers at this level (Hourglass)
  units: str = ""              # fixed:P | word | sentence | paragraph | bytes:<chars> | document
  max_len: int = 0             #                                (mgm/model/units.py)
  max_units: int = 0
  pool: str = "mean"           # concat | mean | attention | last | max (mgm/nn/pooling.py)
  upsample: str = "repeat"     # repeat | linear | attention[:linear] (mgm/nn/upsample.py)
  aux_loss: str = ""           # '' | bag | first
  aux_weight: float = 0.0
  mixer: str = "attention"     # attention | lstm | gru | conv:K (mgm/nn/mixers.py)
  cross_attention: bool = False  # its generator blocks read the encoders' memory
  span_kind: Any = dataclasses.field(init=False, repr=False, compare=False)
  units_kind: Any = dataclasses.field(init=False, repr=False, compare=False)
  pool_kind: Any = dataclasses.field(init=False, repr=False, compare=False)
  upsample_kind: Any = dataclasses.field(init=False, repr=False, compare=False)
  mixer_kind: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    kinds = {"span_kind": SPANS.parse(self.span),
             "units_kind": UNITS.parse(self.units) if self.units else None,
             "pool_kind": POOLING.parse(self.pool),
             "upsample_kind": UPSAMPLING.parse(self.upsample),
             "mixer_kind": MIXERS.parse(self.mixer)}
    kinds["mixer_kind"].check_span(kinds["span_kind"])
    for name, kind in kinds.items():
      object.__setattr__(self, name, kind)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  vocab_size: int
  levels: tuple[LevelSpec, ...]   # coarsest (level 1) first, token level last
  mlp_ratio: int = 4
  rope_base: float = 10_000.0
  qk_norm: bool = False
  remat: bool = False
  remat_policy: str = "full"      # full | save_dots (mgm/nn/transformer.py)
  scan_layers: bool = False       # each stack's blocks as one nn.scan (mgm/nn/transformer.py)
  dtype: str = "float32"
  attention_impl: str = "auto"    # auto | xla | cudnn | blockwise (mgm/nn/attention.py)
  loss_chunk: int = 0             # token loss over chunks of positions (mgm/model/loss.py); 0: off
  encoders: tuple = ()            # EncoderSpecs (mgm/nn/encoders.py); () = unconditioned
  fusion: str = ""                # '' (one encoder, its memory as is) | concat | gated
                                  # | attention:K (mgm/nn/fusion.py)
  memory_width: int = 0           # the fused memory's width (0: the widest encoder's)
  num_tasks: int = 0              # task mixtures (data.tasks): a learned task embedding
                                  # per task; 0 = none (mgm/model/lm.py)

  @property
  def fusion_kind(self):
    """The fusion kind object, None without fusion."""
    from mgm.nn.fusion import FUSION
    return FUSION.parse(self.fusion) if self.fusion else None

  @property
  def fused_width(self) -> int:
    """Width of the memory the cross-attention reads."""
    if not self.fusion:
      return self.encoders[0].width
    return self.memory_width or max(e.width for e in self.encoders)

  @property
  def memory_len(self) -> int:
    """Slots M of the memory the cross-attention reads."""
    lengths = [e.encoder_kind.memory_len(e) for e in self.encoders]
    return self.fusion_kind.memory_len(lengths) if self.fusion else lengths[0]

  @property
  def inputs(self) -> tuple[str, ...]:
    """The conditioning inputs the encoders read ('image', 'source'), sorted."""
    return tuple(sorted({e.encoder_kind.input for e in self.encoders}))

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def token_level(self) -> LevelSpec:
    return self.levels[-1]


def _positive(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(field, f"must be a positive integer, got {value!r}")


def _non_negative(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ConfigError(field, f"must be an integer >= 0, got {value!r}")


LEVEL_FIELDS = tuple(f.name for f in dataclasses.fields(LevelSpec) if f.init)


def level_from_config(cfg, i, coarse: bool) -> LevelSpec:
  field = f"model.levels[{i}]"
  for name in ("width", "depth", "heads"):
    if name not in cfg:
      raise ConfigError(f"{field}.{name}", "is missing")
  for name in ("width", "heads"):
    _positive(cfg[name], f"{field}.{name}")
  _non_negative(cfg.depth, f"{field}.depth")
  attention = cfg.get("mixer", "attention") == "attention"   # only attention has heads
  if attention and cfg.width % cfg.heads:
    raise ConfigError(f"{field}.heads", f"width {cfg.width} is not divisible by "
                      f"heads {cfg.heads}; choose heads dividing the width")
  if attention and (cfg.width // cfg.heads) % 2:
    raise ConfigError(f"{field}.heads", f"head dimension {cfg.width // cfg.heads} "
                      "must be even for rotary embeddings")
  unknown = sorted(set(cfg.keys()) - set(LEVEL_FIELDS))
  if unknown:
    raise ConfigError(f"{field}.{unknown[0]}", "is not a level field; level fields are "
                      f"{sorted(LEVEL_FIELDS)}")
  try:
    level = LevelSpec(**{k: cfg[k] for k in cfg.keys()})
  except KindError as e:
    raise ConfigError(f"{field}.{e.field}", str(e)) from None
  for name in ("pre_layers", "max_len", "max_units"):
    _non_negative(getattr(level, name), f"{field}.{name}")
  if not isinstance(level.cross_attention, bool):
    raise ConfigError(f"{field}.cross_attention", f"must be True or False, got "
                      f"{level.cross_attention!r}")
  if level.aux_loss not in AUX_LOSSES:
    raise ConfigError(f"{field}.aux_loss", f"unknown auxiliary loss {level.aux_loss!r}; "
                      f"one of {AUX_LOSSES}")
  try:
    level.span_kind.check(i)
  except KindError as e:
    raise ConfigError(f"{field}.{e.field}", str(e)) from None
  if coarse and not level.units:
    raise ConfigError(f"{field}.units", "a coarse level needs units; use "
                      f"{UNITS.usage}")
  elif not coarse and level.units:
    raise ConfigError(f"{field}.units", "the last level is the token level and has no "
                      "units; give units to the coarser levels before it")
  return level


def check_hierarchy(levels, seq_len: int, field_seq_len: str = "data.seq_len"):
  """Cross-level rules: divisibility, static maxima, pooling and span needs."""
  coarse = levels[:-1]
  if coarse and coarse[0].pre_layers:
    raise ConfigError("model.levels[0].pre_layers", "the coarsest level has nothing "
                      "to pool into; its pre_layers must be 0 (add depth instead)")
  for i, level in enumerate(coarse):
    field = f"model.levels[{i}]"
    arg = level.units_kind.patch
    if arg and seq_len % arg:
      raise ConfigError(field_seq_len, f"{seq_len} is not divisible by the patch size "
                        f"{arg} of {field}.units={level.units!r}; use a multiple of {arg}")
    patch = segment.fixed_patch(levels, i)
    if not patch and level.max_units <= 0:
      raise ConfigError(f"{field}.max_units", f"units={level.units!r} are not a fixed "
                        "patch, so give a static bound on units per sequence "
                        f"(e.g. {seq_len // 4})")
    child = segment.fixed_patch(levels, i + 1) if i + 1 < len(coarse) else 1
    static = bool(patch and child)    # a fixed number of children per unit
    for name, kind, what in (("pool", level.pool_kind, "pooling"),
                             ("upsample", level.upsample_kind, "upsampling")):
      if kind.needs_fixed_children and not static:
        raise ConfigError(f"{field}.{name}", f"{kind} {what} needs fixed units at this "
                          "level and the next finer one (fixed:P with nested periods); "
                          f"use one of {_flexible(name)} for delimiter units")
  for i, level in enumerate(levels):
    if level.aux_loss and i == len(levels) - 1:
      raise ConfigError(f"model.levels[{i}].aux_loss", "auxiliary losses belong to "
                        "coarse levels; the token level already has the token loss")


def _flexible(name) -> tuple[str, ...]:
  """The pooling or upsampling kinds that work with delimiter units."""
  registry = POOLING if name == "pool" else UPSAMPLING
  return tuple(n for n in registry.names() if not registry.parse(n).needs_fixed_children)


def check_packing(packing):
  """data.packing: 'document_mask' (each document of a row alone) or 'none' (a row
  is one stream); see mgm/model/lm.py."""
  if packing not in PACKINGS:
    raise ConfigError("data.packing", f"unknown packing {packing!r}; use document_mask "
                      "(documents packed in a row do not see each other) or none (a row "
                      "is one stream)")


def from_config(model_cfg) -> ModelSpec:
  levels = model_cfg.levels
  if not levels:
    raise ConfigError("model.levels", "is empty; give at least one level "
                      "(one level = a flat decoder-only LM)")
  _positive(model_cfg.vocab_size, "model.vocab_size")
  _positive(model_cfg.mlp_ratio, "model.mlp_ratio")
  if model_cfg.dtype not in ("float32", "bfloat16", "float16"):
    raise ConfigError("model.dtype", f"{model_cfg.dtype!r}; use float32, bfloat16 or float16")
  check_attention_impl(model_cfg.attention_impl, model_cfg.dtype)
  if model_cfg.remat_policy not in REMAT_POLICIES:
    raise ConfigError("model.remat_policy", f"{model_cfg.remat_policy!r}; use one of "
                      f"{tuple(REMAT_POLICIES)}")
  levels = tuple(level_from_config(l, i, coarse=i < len(levels) - 1)
                 for i, l in enumerate(levels))
  encoders = encoders_from_config(model_cfg, levels)
  return ModelSpec(
      vocab_size=model_cfg.vocab_size, levels=levels, encoders=encoders,
      fusion=model_cfg.get("fusion", ""),
      memory_width=model_cfg.get("memory_width", 0),
      num_tasks=_num_tasks(model_cfg.get("num_tasks", 0)),
      mlp_ratio=model_cfg.mlp_ratio, rope_base=float(model_cfg.rope_base),
      qk_norm=bool(model_cfg.qk_norm), remat=bool(model_cfg.remat),
      remat_policy=model_cfg.remat_policy, dtype=model_cfg.dtype,
      scan_layers=bool(model_cfg.get("scan_layers", False)),
      attention_impl=model_cfg.attention_impl, loss_chunk=model_cfg.get("loss_chunk", 0))


def _num_tasks(value) -> int:
  _non_negative(value, "model.num_tasks")
  return value


def encoders_from_config(model_cfg, levels) -> tuple:
  """model.encoders (a list) -> EncoderSpecs, checked against the levels'
  cross_attention and model.fusion / model.memory_width: a memory nobody reads,
  or cross-attention with no memory, is refused naming the field."""
  configs = list(model_cfg.get("encoders", None) or ())
  reading = [i for i, l in enumerate(levels) if l.cross_attention]
  fusion = model_cfg.get("fusion", "")
  _non_negative(model_cfg.get("memory_width", 0), "model.memory_width")
  if fusion and not configs:
    raise ConfigError("model.fusion", f"{fusion!r} fuses the memories of model.encoders, "
                      "and there are none; add encoders or set model.fusion=''")
  if not configs:
    if reading:
      raise ConfigError(f"model.levels[{reading[0]}].cross_attention", "the model has no "
                        "encoders, so there is no memory to attend to; add model.encoders "
                        "(configs/caption.py, configs/seq2seq.py) or set it False")
    return ()
  from mgm.nn.encoders import encoder_from_config
  from mgm.nn.fusion import FUSION
  encoders = tuple(encoder_from_config(c, i) for i, c in enumerate(configs))
  if len(encoders) > 1 and not fusion:
    raise ConfigError("model.fusion", f"{len(encoders)} encoders need a fusion of their "
                      f"memories; use one of {FUSION.names()}")
  try:
    if fusion:
      FUSION.parse(fusion)
  except KindError as e:
    raise ConfigError("model.fusion", str(e)) from None
  if not reading:
    raise ConfigError("model.levels[0].cross_attention", "the model has encoders but no "
                      "level reads their memory; set cross_attention=True on a level "
                      "(the coarsest is the cheapest)")
  return encoders


def check_attention_impl(impl: str, dtype: str):
  """cuDNN's fused (flash) attention runs on NVIDIA GPUs in bfloat16/float16 only."""
  if impl not in ATTENTION_IMPLS:
    raise ConfigError("model.attention_impl", f"{impl!r}; use one of {ATTENTION_IMPLS}")
  if impl != "cudnn":
    return
  if jax.default_backend() != "gpu":
    raise ConfigError("model.attention_impl", "cudnn needs an NVIDIA GPU, and this job "
                      f"runs on {jax.default_backend()}; use auto or xla")
  if dtype == "float32":
    raise ConfigError("model.attention_impl", "cudnn attention needs model.dtype=bfloat16 "
                      "or float16; use auto or xla for float32")
