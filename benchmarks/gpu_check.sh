#!/usr/bin/env bash
# Everything issue 16 asks of a lent accelerator, as one script that fits a few
# minutes of device time: MFU of flat, megabyte and mgm3 at `base` (one
# device's share of the base batch, benchmarks/mfu.py) and, for each, a
# jax.profiler trace of two steps summarised by op (benchmarks/profile_summary.py).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # on the accelerator machine
#   SIZE=tiny OUT=/tmp/cpu bash benchmarks/gpu_check.sh  # a smoke test of the script on a CPU
#
# Writes $OUT/mfu.jsonl (one JSON line per run), $OUT/profile_<model>.txt and
# $OUT/probe.txt (the device and jax's view of it). A run that fails is named on
# stderr and the others go on; each is held to RUN_TIMEOUT seconds.
set -u
out=${OUT:?set OUT to a folder for the results}
size=${SIZE:-base}
python=${PYTHON:-python3}
limit=${RUN_TIMEOUT:-150}
mkdir -p "$out"
"$python" -c "import jax; print(jax.devices()); print(jax.print_environment_info(True))" \
    > "$out/probe.txt" 2>&1
nvidia-smi >> "$out/probe.txt" 2>&1 || true
batch=$([ "$size" = base ] && echo 8 || echo 2)
for model in flat megabyte mgm3; do
  config="--config=configs/lm.py:model=$model,size=$size"
  timeout "$limit" "$python" -m benchmarks.mfu --steps=10 --out="$out/mfu.jsonl" "$config" \
      --config.train.batch_size=$batch || echo "gpu_check: FAILED mfu $model" >&2
  rm -rf "$out/run_$model"
  timeout "$limit" "$python" launch.py "$config" --workdir="$out/run_$model" \
      --config.train.batch_size=$batch --config.train.steps=8 --config.train.eval_every=1000 \
      --config.checkpoint.every_steps=1000 --config.profile.steps=5,6 > "$out/run_$model.log" 2>&1 \
      || echo "gpu_check: FAILED profile $model" >&2
  "$python" -m benchmarks.profile_summary "$out/run_$model" --top=15 > "$out/profile_$model.txt" \
      2>&1 || echo "gpu_check: FAILED summary $model" >&2
  rm -rf "$out/run_$model/checkpoints"
done
