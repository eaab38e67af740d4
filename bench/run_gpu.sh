#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one command (its device time is scarce):
#   bash bench/run_gpu.sh            # logs and tables under $OUT (the device tool's) or /tmp/mdfast-gpu
# Installs mdfast into the machine's own Python (no network: --no-deps), builds the CUDA extension
# for Hopper, runs the GPU tests and every backend's tests on CUDA tensors, then the benchmarks.
# Copy the tables into bench/RESULTS.md with the device, date and command they print.
set -uo pipefail
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-/tmp/mdfast-gpu}
mkdir -p "$out"
cd "$(dirname "$0")/.."

pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || { tail -20 "$out/install.log"; exit 1; }
mdfast info | tee "$out/info.txt"
python -m pytest -q -ra tests/test_gpu.py tests/test_token_stats.py tests/test_xflow_step.py tests/test_body_kernels.py \
    -k "triton or cuda" 2>&1 | tee "$out/tests.log" | tail -25
python bench/bench_step.py 2>&1 | tee "$out/bench_step.md"
python bench/bench_e2e.py --preset llada8b --batches 1,8 --steps 128 --decoders xflow,low_confidence \
    --repeat 3 --out "$out/bench_e2e.md" 2>&1 | tail -12
