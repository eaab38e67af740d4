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
{ python -m pytest -q -ra tests/test_gpu.py
  python -m pytest -q -ra tests/test_token_stats.py tests/test_xflow_step.py tests/test_body_kernels.py -k "triton or cuda"
} 2>&1 | tee "$out/tests.log" | grep -E "passed|failed|FAILED|Error" | tail -25
python bench/bench_step.py 2>&1 | tee "$out/bench_step.md"
# issue 4: the loops alone (the same ModernBERT-style body under both), LLaDA-8B shapes
python bench/bench_e2e.py --preset llada8b --batches 1 --steps 128 --decoders xflow,low_confidence \
    --repeat 3 --out "$out/e2e_loops.md" 2>&1 | tail -8
# issue 5: the native fused LLaDA body + whole-step CUDA graphs against the eager, unfused port
python bench/bench_e2e.py --preset llada8b --body llada --batches 1 --steps 128,512 --decoders xflow,low_confidence \
    --repeat 1 --out "$out/e2e_llada_b1.md" 2>&1 | tail -12
python bench/bench_e2e.py --preset llada8b --body llada --batches 8 --steps 128 --decoders xflow \
    --repeat 1 --no-compile --out "$out/e2e_llada_b8.md" 2>&1 | tail -8
