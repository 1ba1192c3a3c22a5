#!/usr/bin/env bash
# The GPU check of bh-routing: run it as is, from anywhere, on a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [LOGDIR]            pytest -m gpu, then benchmarks/run.py --device cuda:
#                                                    writes BENCHMARKS-gpu.md, benchmarks/generation_speed_gpu.png
#                                                    and LOGDIR/{env.txt,pytest.log,benchmarks.log,gpu.json}
#   bash benchmarks/gpu_check.sh --dry-run LOGDIR    the same steps on the CPU at tiny sizes, writing only into
#                                                    LOGDIR (the test suite runs this so the script does not rot)
#
# PYTHON picks the interpreter (default python3); the checkout's src/ is put first on PYTHONPATH, so
# nothing needs installing. Sized to finish in under 5 minutes on one H100. See BENCHMARKS.md, "GPU check".
set -uo pipefail

dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
if [[ $# -gt 1 || "${1:-}" == -* ]]; then
    echo "error: usage: bash benchmarks/gpu_check.sh [--dry-run] [LOGDIR]" >&2
    exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log=$(mkdir -p "${1:-$root/runs/gpu-check}" && cd "${1:-$root/runs/gpu-check}" && pwd)
py=${PYTHON:-python3}
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)

if (( dry )); then
    run_args=(--device cpu --tiny --quick --only routing,moe,overhead,generation,peakmem --threads 1
              --markdown "$log/BENCHMARKS-gpu.md" --figure "$log/generation_speed_gpu.png")
else
    if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: no CUDA device visible to $py (on a CPU machine use --dry-run)" >&2
        exit 2
    fi
    run_args=(--device cuda --threads 8 --markdown BENCHMARKS-gpu.md)
fi

{
    date -u
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$py" -c "import platform, torch, transformers; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} >"$log/env.txt" 2>&1
echo "gpu_check: environment in $log/env.txt"

# 1. the GPU tests (every other test is deselected; a test module whose imports are missing here is reported, not fatal)
"$py" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tee "$log/pytest.log"
echo "PYTEST-EXIT ${PIPESTATUS[0]}" >>"$log/pytest.log"

# 2. routing, MoE block, ops and host syncs per MoE layer, generation (bf16, all 16 layers), peak memory of bh-routing run --quick (bf16, fp16)
"$py" benchmarks/run.py "${run_args[@]}" --keep-going --json "$log/gpu.json" --pytest-log "$log/pytest.log" 2>&1 \
    | tee "$log/benchmarks.log"
rc=${PIPESTATUS[0]}

# ---- 3. T4 emulation (issue #25) ------------------------------------------------------------------
# float16, eager experts, the process capped at 14.5 GiB (set_per_process_memory_fraction): `bh-routing run
# --config colab-t4` on the real-size model (random weights) to the end, each step timed, beside the memory
# plan's prediction; GPU_CHECK_FULL_RUN=1 also times the full default run per step. Writes LOGDIR/t4.json.
t4_args=(--out "$log/t4.json")
(( dry )) && t4_args+=(--dry-run)
[[ "${GPU_CHECK_FULL_RUN:-0}" == 1 ]] && t4_args+=(--full-run)
"$py" benchmarks/bench_t4.py "${t4_args[@]}" 2>&1 | tee "$log/t4.log"
t4_rc=${PIPESTATUS[0]}
echo "gpu_check: T4 emulation exit code $t4_rc (see $log/t4.log)" | tee -a "$log/benchmarks.log"
(( rc == 0 )) && rc=$t4_rc
# ---- end of the T4 emulation ----------------------------------------------------------------------

echo "gpu_check: done in $(( $(date +%s) - start )) s; benchmarks exit code $rc; logs in $log" | tee -a "$log/benchmarks.log"
exit "$rc"
