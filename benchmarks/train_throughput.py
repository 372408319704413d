"""Training throughput and peak memory of one shape, as one JSON line.

  python benchmarks/train_throughput.py --model=megabyte --dims=256,256 --depths=4,2 \
      --heads=4 --patch=8 --seq_len=1024 --batch=8

Times `train_step` (forward, backward, AdamW update) on synthetic-corpus
batches after one warm-up step. Comparing attention kernels or the chunked
loss on a shared machine: benchmarks/fast_paths.py (interleaved, one process). Peak memory: XLA's estimate for the compiled
step (arguments + temporaries) and the process's peak RSS. Run each shape in
its own process (benchmarks/train_suite.py does) so peak RSS is per shape.
"""
import argparse
import time

import jax

from benchmarks.common import emit, model_config, peak_rss_gib, time_calls
from mgm import flops
from mgm.data import pipeline
from mgm.model import spec as spec_lib
from mgm.model.lm import LM
from mgm.train import init_state, make_optimizer, make_train_step, param_count


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="megabyte")
  p.add_argument("--dims", default="256,256")
  p.add_argument("--depths", default="4,2")
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--patch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=1024)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--remat", action="store_true", help="recompute activations in backward")
  p.add_argument("--scan_layers", action="store_true", help="each stack's blocks as one nn.scan")
  p.add_argument("--attention_impl", default="auto", help="model.attention_impl")
  p.add_argument("--loss_chunk", type=int, default=0, help="model.loss_chunk (0: off)")
  args = p.parse_args()
  dims = [int(x) for x in args.dims.split(",")]
  depths = [int(x) for x in args.depths.split(",")]
  config = model_config(args.model, dims, depths, args.heads, args.patch, args.seq_len)
  config.train.batch_size = args.batch
  config.model.remat = args.remat
  config.model.scan_layers = args.scan_layers
  config.model.attention_impl = args.attention_impl
  config.model.loss_chunk = args.loss_chunk
  spec = spec_lib.from_config(config.model)
  spec_lib.check_hierarchy(spec.levels, args.seq_len)
  model = LM(spec)
  tx, _ = make_optimizer(config.train)
  state = jax.jit(lambda r: init_state(model, tx, r, (args.batch, args.seq_len)))(
      jax.random.key(0))
  batch = next(iter(pipeline.make_dataset(config.data, "train", batch_size=args.batch, seed=0)))
  step = jax.jit(make_train_step(model, tx))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  seconds, (_, metrics) = time_calls(compiled, state, batch, repeats=args.steps)
  tokens = args.batch * args.seq_len
  flops_per_token = flops.train_flops_per_token(spec, args.seq_len)
  emit({"bench": "train", "model": args.model, "dims": dims, "depths": depths,
        "heads": args.heads, "patch": args.patch, "seq_len": args.seq_len,
        "batch": args.batch, "remat": args.remat, "scan_layers": args.scan_layers,
        "attention_impl": args.attention_impl, "loss_chunk": args.loss_chunk,
        "params": param_count(state.params),
        "step_s": round(seconds, 4), "tokens_per_sec": round(tokens / seconds, 1),
        "seconds_per_sequence": round(seconds / args.batch, 4),
        "compile_s": round(compile_s, 1), "loss": float(metrics["loss"]),
        "xla_peak_gib": round((mem.argument_size_in_bytes + mem.temp_size_in_bytes
                               + mem.output_size_in_bytes) / 2**30, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3), "backend": jax.default_backend(),
        # the machine's speed that day: MFU and the matmul probe it is held to
        "mfu": round(flops.utilization(tokens / seconds, flops_per_token)["mfu"], 3),
        "peak_gflops": round(flops.peak_flops() / 1e9, 1),
        "devices": jax.device_count()})


if __name__ == "__main__":
  main()
