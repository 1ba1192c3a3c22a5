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
# nothing needs installing. Steps 1-2 are sized to finish in under 5 minutes on one H100; steps 3-6 (the
# compiled / CUDA-graph path of issue 28: compiled decode, compiled capture, fused routing, vLLM with CUDA
# graphs) add about 10 (BH_GPU_BATCHES=1,16 halves step 3). See BENCHMARKS.md, "GPU check".
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

# 1. the GPU tests: the modules that mark any (collecting the whole suite costs a minute), every other test
#    deselected; a test module whose imports are missing here is reported, not fatal
mapfile -t gpu_modules < <(grep -rl --include='*.py' 'pytest.mark.gpu' tests | sort)
"$py" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors "${gpu_modules[@]}" 2>&1 | tee "$log/pytest.log"
echo "PYTEST-EXIT ${PIPESTATUS[0]}" >>"$log/pytest.log"

# 2. routing, MoE block, ops and host syncs per MoE layer, generation (bf16, all 16 layers), peak memory of bh-routing run --quick (bf16, fp16)
"$py" benchmarks/run.py "${run_args[@]}" --keep-going --json "$log/gpu.json" --pytest-log "$log/pytest.log" 2>&1 \
    | tee "$log/benchmarks.log"
rc=${PIPESTATUS[0]}

# 3-6. the captured path (issue 28): each writes LOGDIR/<name>.{log,json,md}; a failure is logged and counted, the rest go on
if (( dry )); then
    dev=(--device cpu)
    compiled_args=(--tiny --layers 1 --batches 1 --repeats 1 --backend aot_eager)
    overhead_args=(--compiler aot_eager --only "BH(0.05) empirical")
    fused_args=(--points 1x64 --repeats 2)
    vllm_args=(--dtype float32 --decode-prompts 1 --decode-new 4 --repeats 1 --engines "BH(α=0.05) compiled")
else
    dev=(--device cuda)
    # 16 real-size layers, CUDA graphs (reduce-overhead); batch dependence 1..64 (about 1 min of compiling per batch size)
    compiled_args=(--layers 16 --batches "${BH_GPU_BATCHES:-1,4,16,64}" --repeats 5 --mode reduce-overhead --threads 8)
    overhead_args=(--only "TopK(8),BH(0.05) empirical,BH(0.05) calibrated router,TopP(0.6),Entropy(1.0)")
    fused_args=(--points 1x64,16x64,64x64,1024x64 --repeats 15)
    vllm_args=(--dtype bfloat16 --real-size-layers 16 --decode-prompts "${BH_GPU_VLLM_BATCH:-1}" --decode-new 64 --repeats 5
               --clock wall)
fi
failed=0
step() {  # step NAME COMMAND...: run, log, count a failure
    local name=$1; shift
    echo "gpu_check: $name" | tee -a "$log/benchmarks.log"
    local t0=$(date +%s)
    "$@" >"$log/$name.log" 2>&1
    local code=$?
    echo "gpu_check: $name exit code $code after $(( $(date +%s) - t0 )) s" | tee -a "$log/benchmarks.log"
    (( code == 0 )) || failed=$((failed + 1))
}
# 3. decode compiled whole (inductor; CUDA graphs on the GPU): BH(0.05) vs top-8 vs the patch at equal k, eager and compiled
step compiled "$py" benchmarks/bench_compiled.py "${dev[@]}" "${compiled_args[@]}" --json "$log/compiled.json"
# 4. every strategy compiled with fullgraph=True: capture and kernels generated per decode step
step overhead_compiled "$py" benchmarks/bench_overhead.py "${dev[@]}" --compiled "${overhead_args[@]}"
# 5. fused routing: the routing function compiled against eager, decode-size blocks
step fused_routing "$py" benchmarks/bench_routing.py --fused "${dev[@]}" "${fused_args[@]}" --json "$log/fused_routing.json"
# 6. vLLM: compiled engines (CUDA graphs on the GPU) routed by the plugin, BH vs top-8, and eager beside
step vllm_compiled "$py" benchmarks/bench_vllm.py --compile "${vllm_args[@]}" --markdown "$log/vllm_compiled.md" \
    --json "$log/vllm_compiled.json"
# ---- 7. T4 emulation (issue #25) ------------------------------------------------------------------
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
(( rc == 0 && failed > 0 )) && rc=1
echo "gpu_check: done in $(( $(date +%s) - start )) s; benchmarks exit code $rc ($failed of the steps 3-6 failed); logs in $log" \
    | tee -a "$log/benchmarks.log"
exit "$rc"
