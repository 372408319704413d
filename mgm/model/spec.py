"""Hashable model description built from (and validated against) `config.model`.

Flax modules need hashable attributes; `ConfigDict` is not. `ModelSpec` is the
frozen view the modules read. Every model-shape error is raised here, naming
the config field and the fix, before anything is compiled.
"""
import dataclasses

import jax
import jax.numpy as jnp

from mgm.errors import ConfigError
from mgm.model import segment
from mgm.nn.attention import ATTENTION_IMPLS
from mgm.nn.pooling import POOLS
from mgm.nn.transformer import REMAT_POLICIES

AUX_LOSSES = ("", "bag", "first")
UPSAMPLES = ("repeat", "linear")
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
  Hourglass's linear upsampling; fixed units only) and an optional auxiliary
  loss on their context vectors."""
  width: int
  depth: int
  heads: int
  span: str = "full"           # full | parent | window:W
  pre_layers: int = 0          # down-path layers at this level (Hourglass)
  units: str = ""              # fixed:P | word | sentence | paragraph | bytes:<chars>
  max_len: int = 0
  max_units: int = 0
  pool: str = "mean"           # concat | mean | attention | last
  upsample: str = "repeat"     # repeat | linear: how its context reaches its children
  aux_loss: str = ""           # '' | bag | first
  aux_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  vocab_size: int
  levels: tuple[LevelSpec, ...]   # coarsest (level 1) first, token level last
  mlp_ratio: int = 4
  rope_base: float = 10_000.0
  qk_norm: bool = False
  remat: bool = False
  remat_policy: str = "full"      # full | save_dots (mgm/nn/transformer.py)
  dtype: str = "float32"
  attention_impl: str = "auto"    # auto | xla | cudnn (mgm/nn/attention.py)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def token_level(self) -> LevelSpec:
    return self.levels[-1]


def _positive(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(field, f"must be a positive integer, got {value!r}")


def _check_span(span, field):
  if span in ("full", "parent"):
    return
  if span.startswith("window:") and span[7:].isdigit() and int(span[7:]) > 0:
    return
  raise ConfigError(field, f"unknown attention span {span!r}; use 'full', 'parent' "
                    "or 'window:W' with W a positive integer")


def _non_negative(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ConfigError(field, f"must be an integer >= 0, got {value!r}")


def _check_units(units, field):
  kind, arg = None, None
  try:
    kind, arg = segment.parse_units(units)
  except ValueError:
    pass
  if kind == "fixed" and arg and arg > 0:
    return
  if kind in segment.NAMED or (kind == "bytes" and arg):
    return
  raise ConfigError(field, f"unknown units {units!r}; use fixed:P (P > 0), word, "
                    "sentence, paragraph or bytes:<delimiter characters>")


def level_from_config(cfg, i, coarse: bool) -> LevelSpec:
  field = f"model.levels[{i}]"
  for name in ("width", "depth", "heads"):
    if name not in cfg:
      raise ConfigError(f"{field}.{name}", "is missing")
  for name in ("width", "heads"):
    _positive(cfg[name], f"{field}.{name}")
  _non_negative(cfg.depth, f"{field}.depth")
  if cfg.width % cfg.heads:
    raise ConfigError(f"{field}.heads", f"width {cfg.width} is not divisible by "
                      f"heads {cfg.heads}; choose heads dividing the width")
  if (cfg.width // cfg.heads) % 2:
    raise ConfigError(f"{field}.heads", f"head dimension {cfg.width // cfg.heads} "
                      "must be even for rotary embeddings")
  level = LevelSpec(**{k: cfg[k] for k in cfg.keys()}) if all(
      k in LevelSpec.__dataclass_fields__ for k in cfg.keys()) else None
  if level is None:
    unknown = sorted(set(cfg.keys()) - set(LevelSpec.__dataclass_fields__))
    raise ConfigError(f"{field}.{unknown[0]}", "is not a level field; level fields are "
                      f"{sorted(LevelSpec.__dataclass_fields__)}")
  _check_span(level.span, f"{field}.span")
  for name in ("pre_layers", "max_len", "max_units"):
    _non_negative(getattr(level, name), f"{field}.{name}")
  if level.pool not in POOLS:
    raise ConfigError(f"{field}.pool", f"unknown pooling {level.pool!r}; one of {POOLS}")
  if level.upsample not in UPSAMPLES:
    raise ConfigError(f"{field}.upsample", f"unknown upsampling {level.upsample!r}; "
                      f"one of {UPSAMPLES}")
  if level.aux_loss not in AUX_LOSSES:
    raise ConfigError(f"{field}.aux_loss", f"unknown auxiliary loss {level.aux_loss!r}; "
                      f"one of {AUX_LOSSES}")
  if coarse:
    _check_units(level.units, f"{field}.units")
  elif level.units:
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
    kind, arg = segment.parse_units(level.units)
    if kind == "fixed" and seq_len % arg:
      raise ConfigError(field_seq_len, f"{seq_len} is not divisible by the patch size "
                        f"{arg} of {field}.units={level.units!r}; use a multiple of {arg}")
    patch = segment.fixed_patch(levels, i)
    if not patch and level.max_units <= 0:
      raise ConfigError(f"{field}.max_units", f"units={level.units!r} are not a fixed "
                        "patch, so give a static bound on units per sequence "
                        f"(e.g. {seq_len // 4})")
    child = segment.fixed_patch(levels, i + 1) if i + 1 < len(coarse) else 1
    static = bool(patch and child)    # a fixed number of children per unit
    if level.pool == "concat" and not static:
      raise ConfigError(f"{field}.pool", "concat pooling needs fixed units at this "
                        "level and the next finer one (fixed:P with nested periods); "
                        "use mean, attention or last for delimiter units")
    if level.upsample == "linear" and not static:
      raise ConfigError(f"{field}.upsample", "linear upsampling needs fixed units at this "
                        "level and the next finer one (fixed:P with nested periods); "
                        "use repeat for delimiter units")
  for i, level in enumerate(levels):
    if level.span == "parent" and i == 0:
      raise ConfigError("model.levels[0].span", "the coarsest level has no parent; "
                        "use full or window:W")
    if level.aux_loss and i == len(levels) - 1:
      raise ConfigError(f"model.levels[{i}].aux_loss", "auxiliary losses belong to "
                        "coarse levels; the token level already has the token loss")


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
  return ModelSpec(
      vocab_size=model_cfg.vocab_size,
      levels=tuple(level_from_config(l, i, coarse=i < len(levels) - 1)
                   for i, l in enumerate(levels)),
      mlp_ratio=model_cfg.mlp_ratio, rope_base=float(model_cfg.rope_base),
      qk_norm=bool(model_cfg.qk_norm), remat=bool(model_cfg.remat),
      remat_policy=model_cfg.remat_policy, dtype=model_cfg.dtype,
      attention_impl=model_cfg.attention_impl)


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
