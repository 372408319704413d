"""Generation speed: the cached composed generator against recomputing the prefix.

  python -m benchmarks.generate_throughput                 # the table: flat, megabyte, mgm3 x batch 1, 16
  python -m benchmarks.generate_throughput --models=megabyte --batches=1 --new_tokens=2048
  python -m benchmarks.generate_throughput --models=megabyte --token_mixers=attention,lstm,gru,conv:4 \
      --new_tokens=512 --rounds=3 --out=generate_mixers    # the token (last) level's mixer varied
  python -m benchmarks.generate_throughput --conditioned=caption:demo \
      --conditioned=seq2seq:demo --rounds=3 --out=generate_conditioned   # encoder-decoder

Cached: `mgm.decode.generate` (greedy, 2048 new bytes after a 2-byte prompt),
timed after a warm-up call (`--rounds`: the fastest of that many calls, the
models timed in turn). Recompute (the reference, which lives only here):
every new token runs the whole model over the prefix written so far, in
buckets of 128 tokens (one compiled length per bucket, as a JAX recompute
loop must); each bucket's step is timed once and counted 128 times. Parameters
as in benchmarks/train_suite.py (equal within 10%); `--token_mixers` sets
the last level's mixer (mgm/nn/mixers.py), all in one process so a busy
machine slows every mixer alike. Writes benchmarks/results/OUT.{jsonl,md}
(OUT: --out, default generate) with the fp32 matmul probe and the load
average at the start and the end of the run.

Conditioned (`--conditioned=FILE:PRESET`, repeatable: configs/FILE.py's preset,
e.g. caption:demo, seq2seq:model=mgm3,size=demo): random images or full-length
random sources, one per row, and the whole target (data.seq_len - 1 new bytes,
from an empty prompt). Cached: `decode.generate(..., cond=)`, the encoders run
and the memory's keys and values projected once, at prefill. Recompute: every
new token runs the teacher-forced model, encoders included, over the prefix
(as above, in buckets, at most data.seq_len long). The two take turns in each
of `--rounds` rounds; the fastest of each counts.
"""
import argparse
import datetime
import functools
import json
import os
import sys

import importlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, model_config, time_calls
from benchmarks.train_suite import SHAPES
from mgm import decode, flops
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_params, param_count

BUCKET = 128
OUT = os.path.join(os.path.dirname(__file__), "results")


def build(model_name, seq_len, token_mixer="attention"):
  dims, depths = ([int(x) for x in v.split(",")] for v in SHAPES[model_name])
  config = model_config(model_name, dims, depths, heads=4, patch=8, seq_len=seq_len)
  config.model.levels[-1].mixer = token_mixer
  model = LM(spec_lib.from_config(config.model))
  return model, init_params(model, jax.random.key(0), (1, seq_len))


def cached_seconds(models, batch, new_tokens, seq_len, rounds=1):
  """Seconds of one cached call per model (dict key -> (model, params)): each
  compiled and run once, then `rounds` rounds that time every model once in
  turn (interleaved, so a busy spell slows them alike); the fastest round counts."""
  settings = decode.DecodeSettings(strategy="greedy", max_new=new_tokens, stop_at_eos=False)
  calls = {}
  for key, (model, params) in models.items():
    tokens, lengths = decode.pack_prompts(["= "] * batch, settings, model, seq_len)
    calls[key] = functools.partial(decode.generate, model, params, tokens, lengths,
                                   jax.random.key(0), settings)
    jax.block_until_ready(calls[key]()[0])   # compile
  best = dict.fromkeys(calls, float("inf"))
  for _ in range(rounds):
    for key, call in calls.items():
      best[key] = min(best[key], time_calls(lambda: call()[0], warmup=0, repeats=1)[0])
  return best


def recompute_seconds(model, params, batch, new_tokens, prompt=2, cond=None, max_len=None,
                      warmup=1):
  """Seconds to write `new_tokens` by re-running the model over the prefix for
  each (`cond`: a conditioned model's inputs, encoded again every time); bucket
  lengths are capped at `max_len`. `warmup` 0 once each bucket has compiled."""
  forward = _recompute_forward(model)
  total = 0.0
  for start in range(0, new_tokens, BUCKET):
    length = -(-(prompt + start + BUCKET) // 8) * 8
    length = min(length, max_len) if max_len else length
    seconds, _ = time_calls(forward, params, jnp.zeros((batch, length), jnp.int32), cond,
                            warmup=warmup, repeats=1)
    total += seconds * min(BUCKET, new_tokens - start)
  return total


@functools.cache
def _recompute_forward(model):
  """The next token after each row's prefix [B, L] (and `cond`), jitted once per model."""
  return jax.jit(lambda p, t, c: jnp.argmax(model.apply({"params": p}, t, cond=c)[:, -1], -1))


def build_conditioned(name: str):
  """'caption:demo' -> (model, params, data.seq_len) from configs/caption.py's preset."""
  file, _, preset = name.partition(":")
  config = importlib.import_module(f"configs.{file}").get_config(preset or None)
  model = LM(spec_lib.from_config(config.model))
  return model, init_params(model, jax.random.key(0), (1, config.data.seq_len)), \
      config.data.seq_len


def random_cond(spec, batch: int):
  """Random images uint8 [B, H, W, C] / sources int32 [B, S] of real bytes (no PAD)."""
  rng, cond = np.random.default_rng(0), {}
  for e in spec.encoders:
    if e.encoder_kind.input == "image":
      cond["image"] = jnp.asarray(rng.integers(0, 256, (batch, e.image_size, e.image_size,
                                                        e.channels)), jnp.uint8)
    else:
      cond["source"] = jnp.asarray(rng.integers(0, 256, (batch, e.max_len)), jnp.int32)
  return cond


def conditioned_rows(name, batch, rounds):
  """Cached against recompute for one conditioned preset at one batch size,
  interleaved: each round times one cached call and one recompute pass."""
  model, params, seq_len = build_conditioned(name)
  new = seq_len - 1
  settings = decode.DecodeSettings(strategy="greedy", max_new=new, stop_at_eos=False)
  tokens, lengths = decode.pack_tokens([[]] * batch, settings, model, seq_len)
  cond = random_cond(model.spec, batch)
  cached = lambda: decode.generate(model, params, tokens, lengths, jax.random.key(0),
                                   settings, cond=cond)[0]
  jax.block_until_ready(cached())                                             # compile
  recompute_seconds(model, params, batch, new, 0, cond, seq_len)              # compile
  best, ratios = [float("inf")] * 2, []
  for _ in range(rounds):
    c = time_calls(cached, warmup=0, repeats=1)[0]
    r = recompute_seconds(model, params, batch, new, 0, cond, seq_len, warmup=0)
    best, ratios = [min(best[0], c), min(best[1], r)], ratios + [r / c]
  return {"bench": "generate_conditioned", "model": name, "params": param_count(params),
          "batch": batch, "new_tokens": new, "rounds": rounds,
          "cached_tokens_per_sec": round(batch * new / best[0], 1),
          "recompute_tokens_per_sec": round(batch * new / best[1], 2),
          "speedup": round(best[1] / best[0], 1),
          "speedup_per_round": [round(x, 1) for x in ratios], "backend": jax.default_backend()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", default="flat,megabyte,mgm3")
  p.add_argument("--batches", default="1,16")
  p.add_argument("--new_tokens", type=int, default=2048)
  p.add_argument("--token_mixers", default="attention",
                 help="comma-separated mixers for the last (token) level, e.g. "
                      "attention,lstm,gru,conv:4")
  p.add_argument("--out", default="generate", help="benchmarks/results/OUT.{jsonl,md}")
  p.add_argument("--rounds", type=int, default=1, help="timed cached calls; the fastest counts")
  p.add_argument("--conditioned", action="append", default=[],
                 help="FILE:PRESET of configs/FILE.py (caption, seq2seq); repeatable")
  args = p.parse_args()
  if args.conditioned:
    return conditioned_main(args)
  seq_len = -(-(args.new_tokens + 64) // 64) * 64
  machine = {"probe_gflops": [round(flops.measured_matmul_flops() / 1e9)],
             "load": [round(os.getloadavg()[0], 2)]}
  models = {(name, mixer): build(name, seq_len, mixer) for name in args.models.split(",")
            for mixer in args.token_mixers.split(",")}
  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    cached = cached_seconds(models, batch, args.new_tokens, seq_len, args.rounds)
    for (name, mixer), (model, params) in models.items():
      recompute = recompute_seconds(model, params, batch, args.new_tokens)
      rows.append({"bench": "generate", "model": name, "token_mixer": mixer,
                   "params": param_count(params), "batch": batch,
                   "new_tokens": args.new_tokens, "cached_rounds": args.rounds,
                   "cached_tokens_per_sec": round(batch * args.new_tokens / cached[name, mixer], 1),
                   "recompute_tokens_per_sec": round(batch * args.new_tokens / recompute, 2),
                   "speedup": round(recompute / cached[name, mixer], 1),
                   "backend": jax.default_backend()})
      emit(rows[-1])
  rows.sort(key=lambda r: (list(models).index((r["model"], r["token_mixer"])), r["batch"]))
  machine["probe_gflops"].append(round(flops.measured_matmul_flops() / 1e9))
  machine["load"].append(round(os.getloadavg()[0], 2))
  emit(machine)
  write(rows, args, machine)


def conditioned_main(args):
  machine = {"probe_gflops": [round(flops.measured_matmul_flops() / 1e9)],
             "load": [round(os.getloadavg()[0], 2)]}
  rows = []
  for name in args.conditioned:
    for batch in (int(b) for b in args.batches.split(",")):
      rows.append(conditioned_rows(name, batch, args.rounds))
      emit(rows[-1])
  machine["probe_gflops"].append(round(flops.measured_matmul_flops() / 1e9))
  machine["load"].append(round(os.getloadavg()[0], 2))
  emit(machine)
  write_conditioned(rows, args, machine)


def write_conditioned(rows, args, machine):
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, f"{args.out}.jsonl"), "w") as f:
    f.writelines(json.dumps({**r, **machine}) + "\n" for r in rows)
  command = " ".join(["python -m benchmarks.generate_throughput"] + sys.argv[1:])
  lines = [f"Conditioned generation (greedy, the whole target from an empty prompt, random "
           f"images / full-length random sources) on {jax.default_backend()} "
           f"({os.cpu_count()} cores), {datetime.date.today()}: `{command}`. Cached: "
           "`decode.generate(..., cond=)` (encoders and memory K/V once, at prefill). "
           "Recompute: the teacher-forced model with its encoders over the prefix for every "
           f"new token (buckets of {BUCKET}). The two take turns in each of {args.rounds} "
           "round(s); tokens/s from the fastest of each, and the per-round ratios (the "
           "machine was shared: the ratios are the figure to read). The fp32 matmul probe "
           f"(`mgm.flops.measured_matmul_flops`) read {machine['probe_gflops'][0]} GFLOP/s "
           f"at the start and {machine['probe_gflops'][1]} at the end; 1-minute load average "
           f"{machine['load'][0]} and {machine['load'][1]}.", "",
           "| config | params | batch | new bytes | cached tokens/s | recompute tokens/s "
           "| cached / recompute | per round |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
                 f"{r['new_tokens']} | {r['cached_tokens_per_sec']:,.0f} | "
                 f"{r['recompute_tokens_per_sec']:,.1f} | {r['speedup']}x | "
                 f"{', '.join(f'{x}x' for x in r['speedup_per_round'])} |")
  with open(os.path.join(OUT, f"{args.out}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def write(rows, args, machine):
  os.makedirs(OUT, exist_ok=True)
  for r in rows:
    r.update(machine)
  with open(os.path.join(OUT, f"{args.out}.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  command = " ".join(["python -m benchmarks.generate_throughput"] + sys.argv[1:])
  vary = "," in args.token_mixers
  lines = [f"Generation of {args.new_tokens} new bytes (greedy, after a 2-byte prompt) on "
           f"{jax.default_backend()} ({os.cpu_count()} cores), {datetime.date.today()}: "
           f"`{command}`. Shapes as in "
           "train_suite (megabyte: dims 256,256, depths 4,2, patch 8, 4 heads of 64); "
           "token mixer: the last level's. Cached: the fastest of "
           f"{args.rounds} timed call(s) per row, the models taking turns. The fp32 matmul probe "
           "(`mgm.flops.measured_matmul_flops`) read "
           f"{machine['probe_gflops'][0]} GFLOP/s at the start and "
           f"{machine['probe_gflops'][1]} at the end; 1-minute load average "
           f"{machine['load'][0]} and {machine['load'][1]}.", "",
           "| model | token mixer | params | batch | cached tokens/s | recompute tokens/s "
           "| cached / recompute |" + (" cached vs attention |" if vary else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if vary else "")]
  for r in rows:
    line = (f"| {r['model']} | {r['token_mixer']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
            f"{r['cached_tokens_per_sec']:,.0f} | {r['recompute_tokens_per_sec']:,.1f} | "
            f"{r['speedup']}x |")
    if vary:
      base = [a for a in rows if (a["model"], a["batch"], a["token_mixer"])
              == (r["model"], r["batch"], "attention")]
      line += (f" {r['cached_tokens_per_sec'] / base[0]['cached_tokens_per_sec']:.2f} |"
               if base else " |")
    lines.append(line)
  with open(os.path.join(OUT, f"{args.out}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
