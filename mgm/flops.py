"""Analytic training FLOPs per token for every level, and MFU.

Counted as MaxText does: matrix multiplies only (2 FLOPs per multiply-add),
x3 for forward and backward, causal attention at half its square; each kind
counts its own part (a mixer's `flops`, a span's `keys`, a pooling's and an
upsampling's `flops`). Every level
contributes per *position of that level* and is divided by the tokens it
covers, so coarse levels cost less per byte the longer their units are.

These are the model's FLOPs, whatever a kernel executes: MFU (`utilization`)
divides them by the peak, so a faster kernel raises MFU only by taking less
time. `executed=True` counts what XLA's dense kernels run (full causal squares,
local blocks of 2W keys), as its cost analysis does; blockwise causal
attention (the CPU default, mgm/nn/attention.py) runs about T (T + block) / 2
scores per head instead of T^2, and cuDNN skips most of the masked half too,
so the executed count is an upper bound there.
"""
import functools
import time

import jax
import jax.numpy as jnp

from mgm.model import segment
from mgm.nn import cross_attention
from mgm.nn.span import SPANS

# Dense bf16 peak FLOP/s from datasheets (no sparsity).
ACCELERATOR_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
                     "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                     "TPU v6 lite": 918e12}


def _keys(spec, i: int, positions: int, seq_len: int, executed: bool) -> float:
  """Keys per query of level i (for attention mixers), as its span kind counts
  them. A token level attending within its parent runs on P x P patches
  (fixed parents) or local attention over the parent's max_len; a coarse
  level with span parent runs masked over all its positions."""
  levels, n = spec.levels, len(spec.levels)
  span = levels[i].span_kind
  if not span.within_parent:
    return span.keys(positions, executed)
  if i < n - 1:
    return SPANS.parse("full").keys(positions, executed)
  patch = segment.fixed_patch(levels[:-1], n - 2)
  if patch:
    return patch if executed else patch / 2
  return span.keys(seq_len, executed, levels[-2].max_len or None)


def _stack(level, mlp_ratio, positions, keys):
  """Forward FLOPs of a level's pre-layers and generator blocks over `positions`."""
  mlp = 2 * 2 * mlp_ratio * level.width * level.width
  mixer = level.mixer_kind.flops(level.width, keys)
  return (level.depth + level.pre_layers) * positions * (mixer + mlp)


def forward_flops_per_sequence(spec, seq_len: int, executed: bool = False) -> float:
  levels, n = spec.levels, len(spec.levels)
  coarse = levels[:-1]
  positions = [segment.max_units(coarse, i, seq_len) for i in range(n - 1)] + [seq_len]
  total = 0.0
  for i, level in enumerate(levels):
    total += _stack(level, spec.mlp_ratio, positions[i],
                    _keys(spec, i, positions[i], seq_len, executed))
    if i:
      total += levels[i - 1].upsample_kind.flops(levels[i - 1].width, level.width,
                                                 positions[i], positions[i - 1],
                                                 executed)               # parent context
    if i < n - 1:
      child_width, children = levels[i + 1].width, positions[i + 1]
      pool_in = level.pool_kind.in_width(child_width, children // positions[i])
      total += 2 * pool_in * level.width * positions[i]                  # pooled projection
      total += level.pool_kind.flops(child_width, children)
      if level.aux_loss:
        total += 2 * level.width * spec.vocab_size * positions[i]
  total += 2 * levels[-1].width * spec.vocab_size * seq_len              # unembedding
  return total + conditioning_flops(spec, positions)


def conditioning_flops(spec, positions) -> float:
  """Forward FLOPs of one sequence's encoders, fusion and cross-attention
  (`positions`: each level's positions, coarsest first); 0 without encoders."""
  if not spec.encoders:
    return 0.0
  total = sum(e.encoder_kind.flops(e) for e in spec.encoders)
  lengths = [e.encoder_kind.memory_len(e) for e in spec.encoders]
  if spec.fusion:
    total += spec.fusion_kind.flops([e.width for e in spec.encoders], lengths,
                                    spec.fused_width)
  m, dm = spec.memory_len, spec.fused_width
  for level, n in zip(spec.levels, positions):
    if level.cross_attention:
      total += level.depth * (n * cross_attention.flops_per_query(level.width, m)
                              + cross_attention.flops_per_memory(level.width, dm, m))
  return total


def train_flops_per_token(spec, seq_len: int, executed: bool = False) -> float:
  return 3 * forward_flops_per_sequence(spec, seq_len, executed) / seq_len


def peak_flops() -> float:
  """The job's peak FLOP/s: datasheet peak x devices on accelerators; on CPU the
  fastest matmul rate measured so far on a host (`probe_peak`, first called
  here if nothing was measured yet) x hosts (fake CPU devices share their
  host's cores)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return (_cpu_peak["fastest"] or probe_peak()) * jax.process_count()
  kind = device.device_kind.lower()
  for name, peak in ACCELERATOR_PEAKS.items():
    if name.lower() in kind:
      return peak * jax.device_count()
  return float("nan")   # unknown accelerator: MFU is reported as NaN, not guessed


_cpu_peak = {"fastest": 0.0}   # FLOP/s of one host, the best of every probe so far


def probe_peak() -> float:
  """Measure the host's fp32 matmul rate again (on CPU; elsewhere a no-op) and
  keep the fastest of all probes: the loop probes at start-up, at each
  evaluation and at the end, so one busy moment on a shared machine cannot
  lower the peak MFU is held to (a low peak is what made MFU exceed 100%).
  Returns the host's peak so far in FLOP/s (0.0 off CPU)."""
  if jax.devices()[0].platform == "cpu":
    _cpu_peak["fastest"] = max(_cpu_peak["fastest"], measured_matmul_flops())
  return _cpu_peak["fastest"]


PROBE_SIZES = (256, 512, 1024)


def measured_matmul_flops(sizes=PROBE_SIZES, chain: int = 4, min_trials: int = 5,
                          min_seconds: float = 0.1) -> float:
  """The host's dense fp32 matmul rate in FLOP/s, as XLA runs it: for each size
  n, one jitted program of `chain` dependent n x n products (dispatch
  amortized; random N(0, 1/n) operands keep values normal, since denormals and
  infinities would time a different path), timed at least `min_trials` times
  and `min_seconds`; the fastest trial of any size counts. Several sizes,
  because which one is fastest depends on the machine's state: on a quiet
  CPU the largest saturates the cores, on a busy one the short products of the
  smaller sizes are the ones that find the cores free (measured here under
  load: 1024 read 45-66 GFLOP/s while 256 read 145-215). XLA's own matmul is
  the ceiling a JAX program reaches on this CPU (about 2x numpy's OpenBLAS)."""
  return max(_matmul_rate(n, chain, min_trials, min_seconds) for n in sizes)


@functools.cache
def _products(size: int, chain: int):
  """(the jitted chain of products, its operand), compiled once per process."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32) / size ** 0.5

  @jax.jit
  def products(x):
    for _ in range(chain):
      x = x @ a
    return x

  products(a).block_until_ready()   # compile
  return products, a


def _matmul_rate(size: int, chain: int, min_trials: int, min_seconds: float) -> float:
  products, a = _products(size, chain)
  fastest, spent, trials = float("inf"), 0.0, 0
  while trials < min_trials or spent < min_seconds:
    start = time.perf_counter()
    products(a).block_until_ready()
    seconds = time.perf_counter() - start
    fastest, spent, trials = min(fastest, seconds), spent + seconds, trials + 1
  return 2 * size ** 3 * chain / fastest


def utilization(tokens_per_sec: float, flops_per_token: float) -> dict:
  """Training TFLOP/s, MFU and the peak FLOP/s MFU is held to, for a measured
  rate (the one place they are computed). MFU counts the reported (MaxText)
  FLOPs, which credit causal attention at half its square: never more than
  the chip executes."""
  achieved = tokens_per_sec * flops_per_token
  peak = peak_flops()
  return {"tflops_per_sec": achieved / 1e12, "mfu": achieved / peak, "peak_flops": peak}
