#!/usr/bin/env bash
# Everything issue 16 asks of a lent accelerator, as one script that fits a few
# minutes of device time: MFU of flat, megabyte and mgm3 at `base` (one
# device's share of the base batch, benchmarks/mfu.py), each with a
# jax.profiler trace of two more steps in the same process summarised by op
# (benchmarks/profile_summary.py), then variants (XLA's attention, batch 16)
# while time lasts.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # on the accelerator machine
#   SIZE=tiny OUT=/tmp/cpu bash benchmarks/gpu_check.sh  # a smoke test of the script on a CPU
#
# Writes $OUT/probe.txt (the device, jax's view of it, and a bf16 matmul probe:
# the ceiling the hardware gives XLA), $OUT/gpu_tests.txt, $OUT/mfu.jsonl (one JSON line per run),
# $OUT/profile_<model>.md and $OUT/log.txt. The most wanted runs go first; a
# run that fails is named in the log and the others go on; each is held to
# RUN_TIMEOUT seconds.
set -u
out=${OUT:?set OUT to a folder for the results}
size=${SIZE:-base}
python=${PYTHON:-python3}
limit=${RUN_TIMEOUT:-150}
mkdir -p "$out"
"$python" - > "$out/probe.txt" 2>&1 <<'PY'
import time, jax, jax.numpy as jnp
print(jax.devices()); jax.print_environment_info()
for n in (4096, 8192):
  a = jnp.ones((n, n), jnp.bfloat16); f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready(); t = time.perf_counter()
  for _ in range(10): r = f(a)
  r.block_until_ready(); s = (time.perf_counter() - t) / 10
  print(f"probe: bf16 matmul {n}^3 via XLA: {2 * n**3 / s / 1e12:.1f} TFLOP/s")
PY
nvidia-smi >> "$out/probe.txt" 2>&1 || true
# The GPU-only tests first: cuDNN (and, with packed documents, Pallas's flash
# kernel) against XLA in loss and gradients (tests/conftest.py defaults to CPU).
[ "$size" = base ] && JAX_PLATFORMS=cuda timeout "$limit" "$python" -m pytest -q \
    -p no:cacheprovider tests/test_compute.py -k cudnn > "$out/gpu_tests.txt" 2>&1
batch=$([ "$size" = base ] && echo 8 || echo 2)
mfu() {   # mfu NAME MODEL [PROFILE] [--config.overrides...]
  local name=$1 model=$2 profile=$3 flags=${XLA_FLAGS:-}; shift 3
  # XLA on GPU runs most of a step as CUDA-graph command buffers, which the trace
  # shows as opaque `command_buffer_N` ops: a profiled run turns them off (its
  # JSON line records the flag; its MFU may differ a little from the others').
  [ -n "$profile" ] && flags="$flags --xla_gpu_enable_command_buffer="
  echo "== $name $(date -u +%T)" >> "$out/log.txt"
  XLA_FLAGS="$flags" timeout "$limit" "$python" -m benchmarks.mfu --steps=10 --out="$out/mfu.jsonl" \
      "--config=configs/lm.py:model=$model,size=$size" --config.train.batch_size=$batch \
      ${profile:+--profile="$out/profile_$name.md"} "$@" >> "$out/log.txt" 2>&1 \
      || echo "gpu_check: FAILED $name" | tee -a "$out/log.txt" >&2
  rm -rf "$out/profile_$name.md.trace"   # summarised; the raw trace stays on the machine
}
mfu flat flat 1
mfu megabyte megabyte 1
mfu mgm3 mgm3 1
mfu flat_batch16 flat "" --config.train.batch_size=16
mfu mgm3_batch16 mgm3 "" --config.train.batch_size=16
mfu flat_xla_attention flat "" --config.model.attention_impl=xla
echo "== done $(date -u +%T)" >> "$out/log.txt"
