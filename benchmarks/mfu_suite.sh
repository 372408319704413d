#!/usr/bin/env bash
# Training MFU on one accelerator for the base presets, each at one device's
# share of the base batch (8 of its 64 sequences of 8192 bytes):
#   bash benchmarks/mfu_suite.sh benchmarks/results/mfu.jsonl
# One JSON line per run (benchmarks/mfu.py); a run that fails is named on
# stderr and the others go on.
set -u
out=${1:-benchmarks/results/mfu.jsonl}
python=${PYTHON:-python3}
run() {
  local config=$1; shift
  timeout "${RUN_TIMEOUT:-240}" "$python" -m benchmarks.mfu --steps=10 --out="$out" \
      "$config" --config.train.batch_size=8 "$@" || echo "mfu_suite: FAILED $config $*" >&2
}
run --config=configs/lm.py:base
run --config=configs/lm.py:base --config.model.remat=False
run --config=configs/lm.py:base --config.model.remat_policy=save_dots
run --config=configs/lm.py:base --config.model.attention_impl=xla
run --config=configs/lm.py:model=megabyte,size=base
run --config=configs/lm.py:model=mgm3,size=base
