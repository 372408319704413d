"""Generation speed: the cached composed generator against recomputing the prefix.

  python -m benchmarks.generate_throughput                 # the table: flat, megabyte, mgm3 x batch 1, 16
  python -m benchmarks.generate_throughput --models=megabyte --batches=1 --new_tokens=2048

Cached: `mgm.decode.generate` (greedy, 2048 new bytes after a 2-byte prompt),
timed after a warm-up call. Recompute (the reference, which lives only here):
every new token runs the whole model over the prefix written so far, in
buckets of 128 tokens (one compiled length per bucket, as a JAX recompute
loop must); each bucket's step is timed once and counted 128 times. Parameters
as in benchmarks/train_suite.py (equal within 10%). Writes
benchmarks/results/generate.{jsonl,md}.
"""
import argparse
import datetime
import json
import os

import jax
import jax.numpy as jnp

from benchmarks.common import emit, model_config, time_calls
from benchmarks.train_suite import SHAPES
from mgm import decode
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_params, param_count

BUCKET = 128
OUT = os.path.join(os.path.dirname(__file__), "results")


def build(model_name, seq_len):
  dims, depths = ([int(x) for x in v.split(",")] for v in SHAPES[model_name])
  config = model_config(model_name, dims, depths, heads=4, patch=8, seq_len=seq_len)
  model = LM(spec_lib.from_config(config.model))
  return model, init_params(model, jax.random.key(0), (1, seq_len))


def cached_seconds(model, params, batch, new_tokens, seq_len):
  settings = decode.DecodeSettings(strategy="greedy", max_new=new_tokens, stop_at_eos=False)
  tokens, lengths = decode.pack_prompts(["= "] * batch, settings, model, seq_len)
  generate = lambda: decode.generate(model, params, tokens, lengths, jax.random.key(0),
                                     settings)[0]
  seconds, _ = time_calls(generate, warmup=1, repeats=1)
  return seconds


def recompute_seconds(model, params, batch, new_tokens, prompt=2):
  forward = jax.jit(lambda p, t: jnp.argmax(model.apply({"params": p}, t)[:, -1], -1))
  total = 0.0
  for start in range(0, new_tokens, BUCKET):
    length = -(-(prompt + start + BUCKET) // 8) * 8
    seconds, _ = time_calls(forward, params, jnp.zeros((batch, length), jnp.int32),
                            warmup=1, repeats=1)
    total += seconds * min(BUCKET, new_tokens - start)
  return total


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", default="flat,megabyte,mgm3")
  p.add_argument("--batches", default="1,16")
  p.add_argument("--new_tokens", type=int, default=2048)
  args = p.parse_args()
  seq_len = -(-(args.new_tokens + 64) // 64) * 64
  rows = []
  for name in args.models.split(","):
    model, params = build(name, seq_len)
    for batch in (int(b) for b in args.batches.split(",")):
      cached = cached_seconds(model, params, batch, args.new_tokens, seq_len)
      recompute = recompute_seconds(model, params, batch, args.new_tokens)
      rows.append({"bench": "generate", "model": name, "params": param_count(params),
                   "batch": batch, "new_tokens": args.new_tokens,
                   "cached_tokens_per_sec": round(batch * args.new_tokens / cached, 1),
                   "recompute_tokens_per_sec": round(batch * args.new_tokens / recompute, 2),
                   "speedup": round(recompute / cached, 1), "backend": jax.default_backend()})
      emit(rows[-1])
  write(rows)


def write(rows):
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, "generate.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  lines = ["Generation of 2048 new bytes (greedy, after a 2-byte prompt) on "
           f"{jax.default_backend()} ({os.cpu_count()} cores), {datetime.date.today()}: "
           "`python -m benchmarks.generate_throughput`. Shapes as in "
           "train_suite (megabyte: dims 256,256, depths 4,2, patch 8, 4 heads of 64).", "",
           "| model | params | batch | cached tokens/s | recompute tokens/s | cached / recompute |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
            f"{r['cached_tokens_per_sec']:,.0f} | {r['recompute_tokens_per_sec']:,.1f} | "
            f"{r['speedup']}x |" for r in rows]
  with open(os.path.join(OUT, "generate.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
