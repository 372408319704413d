"""Bits/byte of every preset at demo size on the synthetic corpus after the same
number of training FLOPs (the flat demo's budget: 250 steps of 16 x 256 bytes).

  python -m benchmarks.preset_bpb        # writes benchmarks/results/preset_bpb.{jsonl,md}

Each preset trains through launch.py for as many steps as the budget buys at
its analytic FLOPs per token (mgm/flops.py), then reports eval bits/byte
beside the corpus's entropy floor and unigram entropy.
"""
import json
import os
import subprocess
import sys

from configs import lm as lm_configs
from mgm import flops
from mgm.model import spec as spec_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "results")


def budget():
  config = lm_configs.get_config("model=flat,size=demo")
  spec = spec_lib.from_config(config.model)
  tokens = config.train.steps * config.train.batch_size * config.data.seq_len
  return tokens * flops.train_flops_per_token(spec, config.data.seq_len)


def run(model, total_flops, workdir):
  config = lm_configs.get_config(f"model={model},size=demo")
  spec = spec_lib.from_config(config.model)
  per_step = (flops.train_flops_per_token(spec, config.data.seq_len)
              * config.train.batch_size * config.data.seq_len)
  steps = max(config.train.warmup_steps + 1, round(total_flops / per_step))
  cmd = [sys.executable, "launch.py", f"--config=configs/lm.py:model={model},size=demo",
         f"--workdir={workdir}", f"--config.train.steps={steps}",
         f"--config.train.eval_every={steps}", f"--config.checkpoint.every_steps={steps}"]
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  return {"model": model, "steps": steps, "train_flops": steps * per_step,
          "params": summary["params"], "eval_bpb": summary["eval_bpb"],
          "entropy_floor_bpb": summary["entropy_floor_bpb"],
          "unigram_bpb": summary["unigram_bpb"], "tokens_per_sec": summary["tokens_per_sec"],
          "wall_s": summary["wall_s"]}


def main():
  os.makedirs(OUT, exist_ok=True)
  total = budget()
  rows = []
  for model in lm_configs.MODELS:
    rows.append(run(model, total, os.path.join(ROOT, "runs", "preset_bpb", model)))
    print(json.dumps(rows[-1]), flush=True)
  with open(os.path.join(OUT, "preset_bpb.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  lines = [f"Training budget {total / 1e12:.2f} TFLOP each (the flat demo's), synthetic "
           f"corpus: entropy floor {rows[0]['entropy_floor_bpb']:.3f}, unigram "
           f"{rows[0]['unigram_bpb']:.3f} bits/byte.", "",
           "| model | params | steps | eval bits/byte | tokens/s (CPU) | wall s |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['eval_bpb']:.3f} | "
            f"{r['tokens_per_sec']:,.0f} | {r['wall_s']:.0f} |" for r in rows]
  with open(os.path.join(OUT, "preset_bpb.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
