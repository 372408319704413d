"""Cached generation before and after the [B, N, S, H] attention cache, in one process.

  python -m benchmarks.generate_batch_scaling --models=flat,megabyte --new_tokens=1024
  python -m benchmarks.generate_batch_scaling --models=caption:demo

'before' re-creates the old step (keys and values kept [B, S, N, H], as sown),
'after' is mgm.nn.attention.cached_attention as it is; each is traced into its
own jitted `decode.generate`, checked to write the same tokens, then the two
are timed in turn for `--rounds` rounds at batch 1 and 16 (the fastest counts).
Models: benchmarks.generate_throughput's (flat, megabyte, mgm3) or a
conditioned preset FILE:PRESET (the whole target from an empty prompt).
Results: benchmarks/results/generate_batch_scaling.md.
"""
import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp

from benchmarks.generate_throughput import build, build_conditioned, random_cond
from mgm import decode, flops
from mgm.nn import attention, mixers

AFTER = attention.cached_attention, mixers.Attention.step_cache


def before_cached_attention(q, k, v, cache, index, key_mask):
  """The step as it was: cache k, v [B, S, N, H]."""
  rows = jnp.arange(q.shape[0])
  write = lambda c, x: c.at[rows, index].set(x[:, 0].astype(c.dtype), mode="drop")
  cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
  start, mask = key_mask
  keys, values = cache["k"], cache["v"]
  if mask.shape[1] < keys.shape[1]:
    slots = (start[:, None] + jnp.arange(mask.shape[1]))[:, :, None, None]
    keys = jnp.take_along_axis(keys, slots, axis=1)
    values = jnp.take_along_axis(values, slots, axis=1)
  scores = jnp.einsum("bqnh,bsnh->bnqs", q, keys) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  scores = jnp.where(mask[:, None, None, :], scores.astype(jnp.float32), -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return cache, jnp.einsum("bnqs,bsnh->bqnh", probs, values)


def use(which: str):
  """Make the next trace use the 'before' or the 'after' step."""
  if which == "before":
    attention.cached_attention = before_cached_attention
    mixers.Attention.step_cache = lambda self, cache: cache
  else:
    attention.cached_attention, mixers.Attention.step_cache = AFTER


def calls_for(name: str, batch: int, new_tokens: int):
  """{'before', 'after'} -> (a jitted generate call, new tokens it writes)."""
  if ":" in name:
    model, params, seq_len = build_conditioned(name)
    new, cond = seq_len - 1, random_cond(model.spec, batch)
  else:
    seq_len = -(-(new_tokens + 64) // 64) * 64
    (model, params), new, cond = build(name, seq_len), new_tokens, None
  settings = decode.DecodeSettings(strategy="greedy", max_new=new, stop_at_eos=False)
  prompts = [[]] * batch if cond else [[ord("="), ord(" ")]] * batch
  tokens, lengths = decode.pack_tokens(prompts, settings, model, seq_len)
  calls, outs = {}, {}
  for which in ("before", "after"):
    use(which)
    gen = jax.jit(decode.generate.__wrapped__,
                  static_argnames=("model", "settings", "record_logits"))
    calls[which] = functools.partial(gen, model, params, tokens, lengths, jax.random.key(0),
                                     settings, cond=cond)
    outs[which] = jax.block_until_ready(calls[which]()[0])    # compile under `which`
  use("after")
  assert bool((outs["before"] == outs["after"]).all()), f"{name} B={batch}: tokens differ"
  return {w: (c, batch * new) for w, c in calls.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", default="flat,megabyte")
  p.add_argument("--new_tokens", type=int, default=1024)
  p.add_argument("--rounds", type=int, default=2)
  args = p.parse_args()
  probe, load = [round(flops.measured_matmul_flops() / 1e9)], [round(os.getloadavg()[0], 2)]
  calls = {(name, b, w): c for name in args.models.split(",") for b in (1, 16)
           for w, c in calls_for(name, b, args.new_tokens).items()}
  best = dict.fromkeys(calls, float("inf"))
  for _ in range(args.rounds):
    for key, (call, _) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call()[0])
      best[key] = min(best[key], time.perf_counter() - start)
  probe.append(round(flops.measured_matmul_flops() / 1e9))
  load.append(round(os.getloadavg()[0], 2))
  print(f"fp32 matmul probe {probe} GFLOP/s, 1-minute load {load}")
  print("| model | batch | before tokens/s | after tokens/s | after / before |")
  print("|---|---|---|---|---|")
  for name in args.models.split(","):
    for b in (1, 16):
      rate = {w: calls[name, b, w][1] / best[name, b, w] for w in ("before", "after")}
      print(f"| {name} | {b} | {rate['before']:,.0f} | {rate['after']:,.0f} | "
            f"{rate['after'] / rate['before']:.2f}x |")


if __name__ == "__main__":
  main()
