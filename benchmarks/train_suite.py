"""The hierarchy's cost against sequence length: flat, megabyte and mgm3 at
1024, 4096 and 16384 bytes, parameters equal within 10%, 8192-16384 tokens a step.

  python -m benchmarks.train_suite            # writes benchmarks/results/train_suite.{jsonl,md}
  python -m benchmarks.train_suite --models=megabyte --seq_lens=1024   # re-time some rows

Each shape runs in its own process (benchmarks/train_throughput.py) so peak
memory is per shape. The point of the hierarchy is cost that grows slower than
quadratically: the table gives each model's time per sequence at 16384 over
1024 (16 = linear; flat full attention is far above).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

SHAPES = {   # model -> (dims, depths)
    "flat": ("256", "7"),
    "megabyte": ("256,256", "4,2"),
    "mgm3": ("256,256,256", "2,2,2"),
}
SEQ_LENS = (1024, 4096, 16384)
OUT = os.path.join(os.path.dirname(__file__), "results")


def measure(model, seq_len):
  """One shape's row: benchmarks/train_throughput.py timed in a process of its own."""
  dims, depths = SHAPES[model]
  batch = max(1, 8192 // seq_len)
  quadratic = model == "flat" and seq_len > 4096
  cmd = [sys.executable, "-m", "benchmarks.train_throughput", f"--model={model}",
         f"--dims={dims}", f"--depths={depths}", "--heads=4", "--patch=8",
         f"--seq_len={seq_len}", f"--batch={batch}", f"--steps={1 if quadratic else 2}"]
  if quadratic:
    cmd.append("--remat")   # full attention at 16K would not fit in 24 GiB otherwise
  proc = subprocess.run(cmd, capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode:
    return {"model": model, "seq_len": seq_len, "error": proc.stderr.strip()[-300:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows):
  lines = [f"Training throughput and peak memory, parameters equal within 10%, 8192 tokens a "
           f"step (one sequence of 16384; flat there with remat): `python -m "
           f"benchmarks.train_suite`, {os.cpu_count()}-core {platform.machine()} CPU, "
           f"{datetime.date.today()}.", "",
           "| model | params | seq_len | batch | tokens/s | s/sequence | MFU | XLA peak GiB "
           "| peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['model']} | | {r['seq_len']} | | error: {r['error'][:80]} | | | | |")
      continue
    lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['seq_len']} | {r['batch']} | "
                 f"{r['tokens_per_sec']:,.0f} | {r['seconds_per_sequence']:.3f} | "
                 f"{r['mfu']:.0%} | {r['xla_peak_gib']:.2f} | {r['peak_rss_gib']:.2f} |")
  lines += ["", "| model | s/sequence at 16384 / at 1024 (16 = linear) |", "|---|---|"]
  for model in SHAPES:
    by_len = {r["seq_len"]: r for r in rows if r["model"] == model and "error" not in r}
    if 1024 in by_len and 16384 in by_len:
      ratio = by_len[16384]["seconds_per_sequence"] / by_len[1024]["seconds_per_sequence"]
      lines.append(f"| {model} | {ratio:.1f} |")
  probes = sorted(r["peak_gflops"] for r in rows if "peak_gflops" in r)
  if probes:
    lines += ["", f"MFU is held to the machine's fp32 matmul probe, {probes[0]:.0f} to "
              f"{probes[-1]:.0f} GFLOP/s over these runs (mgm/flops.py)."]
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(SHAPES))
  p.add_argument("--seq_lens", default=",".join(map(str, SEQ_LENS)))
  args = p.parse_args()
  os.makedirs(OUT, exist_ok=True)
  path = os.path.join(OUT, "train_suite.jsonl")
  rows = {}
  if os.path.exists(path):   # re-timed rows replace their old ones
    with open(path) as f:
      rows = {(r["model"], r["seq_len"]): r for r in map(json.loads, f)}
  for model in args.models.split(","):
    for seq_len in map(int, args.seq_lens.split(",")):
      rows[model, seq_len] = measure(model, seq_len)
      print(json.dumps(rows[model, seq_len]), flush=True)
      ordered = [rows[k] for k in sorted(rows, key=lambda k: (list(SHAPES).index(k[0]), k[1]))]
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ordered)
  with open(os.path.join(OUT, "train_suite.md"), "w") as f:
    f.write(table(ordered))
  print(table(ordered))


if __name__ == "__main__":
  main()
