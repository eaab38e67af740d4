#!/usr/bin/env bash
# The one GPU command of mdfast: staged checks and measurements that end by themselves
# within 465 s on an H100 or H200, the most informative first. Each stage runs under `timeout` and
# one global deadline; a stage that would start with too little time left is skipped, saying so.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (the device tool: timeout_s 480)
#   STAGES="04 05" bash bench/gpu_check.sh  # rerun some stages (the CUDA build runs if one needs it)
#   bash bench/gpu_check.sh --tiny          # every stage at toy shapes on the CPU (CI runs this)
#
# Writes $OUT/NN_<stage>.log and $OUT/summary.txt (the environment, one line per stage: PASS /
# FAIL / TIMEOUT / SKIP with its key figure, then the GPU targets), or the same under
# build/gpu-check (build/gpu-check-tiny with --tiny) of the checkout when OUT is unset; the stages'
# JSON results go to $GPU_CHECK_RESULTS, else build/gpu-check-results(-tiny), and stay there for a
# rerun of some stages. Prints the summary last. The device tool returns at most 8 files, so the
# background CUDA build writes its log into 00_setup.log, after setup's, and 08 compile into 05_bench.log.
#
# stage          cap s  what (the Python of every stage: bench/gpu_check.py --stage NAME)
# 00 setup         90   nvidia-smi, versions, pip install --no-deps --no-build-isolation -e .
# 01 cuda_build   240   the CUDA extension (TORCH_CUDA_ARCH_LIST=9.0), in the background from the
#                       end of setup; only the stages that need it wait for it (04, 05)
# 02 triton       150   Triton kernels at production shapes vs the float64 reference on the GPU
# 03 graphs        90   whole decoding steps from CUDA graphs == eager steps, bit for bit; fallback
# 04 cuda          90   the CUDA kernels, the same cases as 02 (without the Triton-only body kernels)
# 05 bench        120   kernel benchmark: graph-replayed and eager times, L2 flushed, vs copy
# 06 e2e          200   LLaDA-8B shape end to end: native body + graphs vs eager loop and eager port
# 07 cache         70   KV cache: cache_refresh=1 == no cache; none / prefix / dual at LLaDA-8B widths
# 08 compile      150   torch.compile baselines, only if time is left; its log goes into 05_bench.log
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

tiny=0
for arg in "$@"; do
    case $arg in
        --tiny) tiny=1 ;;
        -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (--tiny, --help)" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
out=${OUT:-build/gpu-check}
limit=${GPU_CHECK_SECONDS:-465}
reserve=10 # seconds kept for the targets table and the summary
stages=${STAGES:-00 01 02 03 04 05 06 07 08}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export MDFAST_BUILD_DIR=${MDFAST_BUILD_DIR:-$PWD/build/ext}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
results=${GPU_CHECK_RESULTS:-build/gpu-check-results}
tiny_flag=()
if ((tiny)); then
    # the CPU only, the Triton kernels under the interpreter
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
    tiny_flag=(--tiny)
    out=${OUT:-build/gpu-check-tiny}
    results=${GPU_CHECK_RESULTS:-build/gpu-check-results-tiny}
fi
mkdir -p "$out" "$results" "$MDFAST_BUILD_DIR"
work=$(mktemp -d)
summary="$out/summary.txt"
start=$SECONDS
# at exit: stop a CUDA build still running (its timeout process passes the signal on), clean up
trap '[[ -s $work/build.pid ]] && kill "$(cat "$work/build.pid")" 2>/dev/null; rm -rf "$work"' EXIT

selected() { [[ " $stages " == *" $1 "* ]]; }
left() { echo $((limit - (SECONDS - start) - reserve)); }

# One summary line per stage, kept in $work and rewritten into summary.txt after every stage, so
# that the summary is current whenever the run is cut short.
record() { # number name status seconds key
    printf '%s %-10s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4" "$5" > "$work/line.$1"
    echo "[$((SECONDS - start))s] $1 $2 $3 ($4 s) $5"
    write_summary
}
write_summary() {
    {
        cat "$work/header" 2>/dev/null
        cat "$work"/line.* 2>/dev/null
        if [[ -s $work/targets ]]; then
            echo
            echo "GPU targets (from $results):"
            cat "$work/targets"
        fi
    } > "$summary"
}
status_of() { # exit status -> PASS / SKIP / TIMEOUT / FAIL
    case $1 in
        0) echo PASS ;;
        3) echo SKIP ;;
        124 | 137) echo TIMEOUT ;;
        *) echo FAIL ;;
    esac
}
key_of() { # the last "KEY: ..." line of a log, else its last line
    local key
    key=$(grep '^KEY: ' "$1" 2>/dev/null | tail -n 1 | cut -c6-)
    [[ -n $key ]] || key=$(tail -n 1 "$1" 2>/dev/null | cut -c1-200)
    echo "$key"
}

{
    echo "mdfast GPU check$( ((tiny)) && echo ' (--tiny: toy shapes on the CPU)')"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git metadata in this copy)')"
    echo "command: ${STAGES:+STAGES=\"$STAGES\" }bash bench/gpu_check.sh $*"
    echo
} > "$work/header"
for n in $stages; do rm -f "$out/${n}_"*.log; done

# ---- 00 setup ----------------------------------------------------------------------------------
setup_log="$out/00_setup.log"
if selected 00; then
    t0=$SECONDS
    {
        echo "== nvidia-smi"
        timeout 20 nvidia-smi || echo "nvidia-smi: not available"
        echo "== machine: $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/ {print $2}') GiB"
        echo "== python, torch, triton, transformers"
        timeout 60 "$PY" - << 'EOF'
import platform, torch, triton, transformers
line = f"Python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    l2 = getattr(p, "L2_cache_size", 0) >> 20
    line = f"{p.name}, {p.multi_processor_count} SMs, {l2} MB L2, {p.total_memory >> 30} GiB; " + line
else:
    line = "no CUDA device; " + line
print(line)
print("KEY: " + line)
EOF
        if ((tiny)); then
            echo "== tiny: no install (the environment running this already has mdfast installed)"
            timeout 60 "$PY" -c "import mdfast; print('mdfast', mdfast.__version__, 'from', mdfast.__file__)"
        else
            echo "== pip install --no-deps --no-build-isolation -e ."
            timeout 120 "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 5
        fi
    } > "$setup_log" 2>&1
    rc=$?
    key=$(key_of "$setup_log")
    echo "device: $key" >> "$work/header"
    record 00 setup "$(status_of $rc)" $((SECONDS - t0)) "$key"
else
    : > "$setup_log"
fi

# ---- 01 cuda_build, in the background ------------------------------------------------------------
build_needed=0
for n in 01 04 05; do selected $n && build_needed=1; done
build_start=$SECONDS
if ((build_needed)); then
    echo "== 01 cuda_build (background, from $((SECONDS - start)) s)" >> "$setup_log"
    {
        timeout -k 10 240 "$PY" bench/gpu_check.py --stage cuda_build --budget 240 "${tiny_flag[@]}" >> "$setup_log" 2>&1 &
        echo $! > "$work/build.pid"
        wait $!
        echo "$? $((SECONDS - build_start))" > "$work/build.done" # exit status, seconds
    } &
fi
build_recorded=0
wait_build() { # wait while $1 seconds would remain for the waiting stage; status 1 when time ran out first
    ((build_needed)) || return 0
    until [[ -s $work/build.done ]]; do
        (($(left) > $1)) || return 1
        sleep 1
    done
    if ((!build_recorded)); then
        local rc seconds
        read -r rc seconds < "$work/build.done"
        build_recorded=1
        record 01 cuda_build "$(status_of "$rc")" "$seconds" "$(key_of "$setup_log")"
    fi
}

# ---- the Python stages ---------------------------------------------------------------------------
run_stage() { # number name cap minimum [build] [log file to append to, instead of NN_name.log]
    local num=$1 name=$2 cap=$3 minimum=$4 log="$out/$1_$2.log" part="$work/stage.log"
    [[ -n ${6:-} ]] && log="$out/$6"
    selected "$num" || return 0
    if [[ ${5:-} == build ]] && ! wait_build "$minimum"; then
        record "$num" "$name" SKIP 0 "the CUDA build still runs with $(left) s left"
        return 0
    fi
    local budget
    budget=$(left)
    if ((budget < minimum)); then
        record "$num" "$name" SKIP 0 "$budget s left of $limit, the stage needs $minimum s"
        return 0
    fi
    ((budget > cap)) && budget=$cap
    rm -f "$results/$name.json"
    local t0=$SECONDS rc
    [[ -n ${6:-} ]] && echo "== $num $name (from $((SECONDS - start)) s)" >> "$log"
    [[ -n ${6:-} ]] || : > "$log"
    timeout -k 10 "$budget" "$PY" bench/gpu_check.py --stage "$name" --budget "$budget" --results "$results" \
        "${tiny_flag[@]}" 2>&1 | tee -a "$log" > "$part"
    rc=${PIPESTATUS[0]}
    local key
    key=$(key_of "$part") # this stage's own output, also where it shares a log
    [[ $rc == 124 || $rc == 137 ]] && key="stopped at its $budget s limit; $key"
    record "$num" "$name" "$(status_of $rc)" $((SECONDS - t0)) "$key"
}

run_stage 02 triton 150 60
run_stage 03 graphs 90 30
run_stage 04 cuda 90 30 build
run_stage 05 bench 120 45 build
run_stage 06 e2e 200 90
run_stage 07 cache 70 35
run_stage 08 compile 150 90 "" 05_bench.log # the device tool returns at most 8 files: 00, 02-07, summary
if selected 01 && ((!build_recorded)); then
    wait_build 0 || record 01 cuda_build TIMEOUT $((SECONDS - build_start)) "still building at the deadline"
fi

# ---- the GPU targets, from what the stages measured ---------------------------------------------
"$PY" bench/gpu_check.py --stage targets --results "$results" "${tiny_flag[@]}" 2>&1 | grep -v '^KEY: ' > "$work/targets"
write_summary
echo
cat "$summary"
! grep -qE '^[0-9]{2} +[a-z_]+ +(FAIL|TIMEOUT)' "$summary"
