"""Blockwise causal attention and the chunked loss against the plain paths on
this machine, interleaved in one process, as JSON lines (issue 16).

  python -m benchmarks.fast_paths --shapes=issue,demo,megabyte --rounds=3

For each shape, train steps (forward, backward, AdamW; as train_throughput
builds them) with `model.attention_impl` 'xla' (the plain path: XLA's dense
attention), 'blockwise', and 'blockwise' with `model.loss_chunk`, compiled
first, then timed in rounds: each round runs every variant `--steps` times in
turn, so a change in the machine's load hits all variants alike. Then the
full causal attention alone (forward, and forward + backward) on the shape's
q, k, v [B, T, N, H], the same way. Reports per variant the median over
rounds of seconds per call, and the median of the per-round ratios to the
plain path; the fp32 matmul probe (mgm.flops) before and after.
"""
import argparse
import dataclasses
import statistics
import time

import jax

from benchmarks.common import emit, model_config
from mgm import flops
from mgm.data import pipeline
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.nn import attention
from mgm.train import init_state, make_optimizer, make_train_step

# name -> (model, dims, depths, heads, patch, seq_len, batch)
SHAPES = {"issue": ("flat", [256], [6], 4, 8, 1024, 8),        # issue 16's flat baseline
          "demo": ("flat", [128], [4], 2, 8, 256, 16),         # the `demo` preset
          "megabyte": ("megabyte", [256, 256], [4, 2], 4, 8, 1024, 8)}
VARIANTS = {"xla": {"attention_impl": "xla"}, "blockwise": {"attention_impl": "blockwise"},
            "blockwise+loss_chunk": {"attention_impl": "blockwise", "loss_chunk": 256}}


def interleaved(fns: dict, args: dict, rounds: int, steps: int) -> dict:
  """{name: [seconds per call, one per round]}; fns[name](*args[name]), in turn."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args[name]))              # compile / warm up
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(steps):
        out = fn(*args[name])
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / steps)
  return times


def summary(times: dict, base: str) -> dict:
  return {name: {"median_s": round(statistics.median(t), 4),
                 "ratio_to_" + base: round(statistics.median(
                     [a / b for a, b in zip(t, times[base])]), 3)}
          for name, t in times.items()}


def train_steps(shape: str, rounds: int, steps: int):
  model_name, dims, depths, heads, patch, seq_len, batch = SHAPES[shape]
  config = model_config(model_name, dims, depths, heads, patch, seq_len)
  config.train.batch_size = batch
  spec = spec_lib.from_config(config.model)
  tx, _ = make_optimizer(config.train)
  data = next(iter(pipeline.make_dataset(config.data, "train", batch_size=batch, seed=0)))
  fns, args = {}, {}
  for name, switches in VARIANTS.items():
    model = LM(dataclasses.replace(spec, **switches), config.data.packing)
    state = jax.jit(lambda r, m=model: init_state(m, tx, r, (batch, seq_len)))(
        jax.random.key(0))
    fns[name], args[name] = jax.jit(make_train_step(model, tx)), (state, data)
  times = interleaved(fns, args, rounds, steps)
  tokens = batch * seq_len
  per_token = flops.train_flops_per_token(spec, seq_len)
  emit({"bench": "fast_paths_train", "shape": shape, "model": model_name, "dims": dims,
        "depths": depths, "heads": heads, "seq_len": seq_len, "batch": batch,
        "packing": config.data.packing, "rounds": rounds, "steps": steps,
        **{name: {**s, "tokens_per_sec": round(tokens / s["median_s"], 1),
                  "mfu": round(per_token * tokens / s["median_s"] / flops.peak_flops(), 3)}
           for name, s in summary(times, "xla").items()}})


def attention_alone(shape: str, rounds: int, steps: int):
  _, dims, _, heads, _, seq_len, batch = SHAPES[shape]
  q, k, v = (jax.random.normal(key, (batch, seq_len, heads, dims[-1] // heads))
             for key in jax.random.split(jax.random.key(0), 3))
  fns, args = {}, {}
  for impl in ("xla", "blockwise"):
    f = lambda q, k, v, impl=impl: attention.full_attention(q, k, v, impl)
    fns[f"{impl}_fwd"] = jax.jit(f)
    fns[f"{impl}_fwd_bwd"] = jax.jit(jax.grad(lambda q, k, v, f=f: f(q, k, v).sum(),
                                              argnums=(0, 1, 2)))
    args[f"{impl}_fwd"] = args[f"{impl}_fwd_bwd"] = (q, k, v)
  times = interleaved(fns, args, rounds, steps)
  out = {}
  for part in ("fwd", "fwd_bwd"):
    out.update({f"{impl}_{part}": {"median_s": round(statistics.median(times[f"{impl}_{part}"]), 4),
                                   "ratio_to_xla": round(statistics.median(
                                       [a / b for a, b in zip(times[f"{impl}_{part}"],
                                                              times[f"xla_{part}"])]), 3)}
                for impl in ("xla", "blockwise")})
  emit({"bench": "fast_paths_attention", "shape": shape, "q_shape": list(q.shape),
        "rounds": rounds, "steps": steps, **out})


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", default="issue,demo,megabyte")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=2)
  args = p.parse_args()
  emit({"bench": "probe", "when": "before", "gflops": round(flops.probe_peak() / 1e9, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backend": jax.default_backend()})
  for shape in args.shapes.split(","):
    train_steps(shape, args.rounds, args.steps)
    if SHAPES[shape][0] == "flat":
      attention_alone(shape, args.rounds, 3 * args.steps)
  emit({"bench": "probe", "when": "after",
        "gflops": round(flops.measured_matmul_flops() / 1e9, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


if __name__ == "__main__":
  main()
