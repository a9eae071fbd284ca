#!/usr/bin/env bash
# The one command a GPU session runs, once, first: about 8 minutes of measuring on a warm H100.
#
#   bash benchmarks/gpu_run.sh             on the GPU machine (device tool: carry .triton-cache)
#   bash benchmarks/gpu_run.sh --dry-run   here, before: builds .triton-cache, prints the plan
#
# Parts, in order of value; each writes its files into $OUT (the folder the device tool hands
# back) the moment it ends, so a run cut short still returns what it finished, and a part that
# cannot finish inside the budget (GPU_RUN_BUDGET_S, default 480 s) is not started:
#   1 env       versions, nvidia-smi, unet-fast check
#   2 tests     pytest -m gpu: compiled correctness (tests/test_gpu.py, torch.compile of UNet)
#   3 steps     decoder steps, batch 8, bf16 channels_last fwd/bwd/fwd+bwd, fused vs eager vs
#               torch.compile; fp32 contiguous forward
#   4 model     UNet 512x512 batch 8 bf16 channels_last, inference and a training step, fused
#               vs the eager reference, peak memory
#   5 compiled  the same UNet under torch.compile (ReferenceUNet and UNet), if time is left
# Files back (the device tool returns 8 at most): gpu_run.log (everything printed), summary.json
# (parts, seconds, kernels compiled on the GPU), steps.json, steps-fp32.json, model.json,
# model-compiled.json.
# Here, afterwards: copy the JSON into benchmarks/results/ (keep the names the script prints) and
# run `python benchmarks/render_results.py`.
#
# The GPU machines run Python 3.12 and Triton 3.6.0 and reach no registry. Compiling our kernels
# there would cost minutes of the window, so --dry-run compiles them here into .triton-cache
# (git-ignored) with that Python and that Triton, for exactly the launches the run makes
# (unet_fast/gpu/plan.py); the run reports how many of our kernels it still had to compile.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET_S=${GPU_RUN_BUDGET_S:-480}
GPU_TRITON=3.6.0
GPU_PYTHON=3.12
# name  estimated seconds (warm H100, kernels from the cache)  what
PARTS=(
    "env      40  versions, nvidia-smi, unet-fast check"
    "tests    120 pytest -m gpu: compiled correctness, torch.compile of UNet, offsets past 2**31, a training step"
    "steps    200 27 step rows: 3 steps x bf16 channels_last x 3 modes x fused/eager/compiled (compile mode default), + 3x3 fp32 forward rows"
    "model    60  UNet 512x512 b8 bf16 channels_last: inference + training step, fused vs eager"
    "compiled 150 UNet 512x512 b8 bf16 channels_last under torch.compile (ReferenceUNet, UNet)"
)

dry_run() {
    echo "gpu_run.sh --dry-run: the GPU run's parts (budget ${BUDGET_S} s of run time on a warm GPU;"
    echo "estimates from the row counts: ~1 s per benchmark row, ~15 s per torch.compile, ~3 s per test):"
    local total=0
    for p in "${PARTS[@]}"; do
        read -r name est what <<<"$p"
        if [ $((total + est)) -le "$BUDGET_S" ]; then
            total=$((total + est))
            printf '  %-9s ~%4s s  (done by ~%4s s)  %s\n' "$name" "$est" "$total" "$what"
        else
            printf '  %-9s ~%4s s  (only if the parts above end early)  %s\n' "$name" "$est" "$what"
        fi
    done
    echo "  planned: ~${total} s of the ${BUDGET_S} s budget"
    # The Triton cache for the GPU machines: record the launches with Triton $GPU_TRITON and torch,
    # then compile them with Python $GPU_PYTHON and Triton $GPU_TRITON alone.
    local rec=.venv-triton36 cc=.venv-gpu-cache py
    py=""
    for candidate in "python$GPU_PYTHON" "$HOME"/.pyenv/versions/"$GPU_PYTHON".*/bin/python; do
        # A pyenv shim exists without the version behind it: ask each candidate to run.
        if "$candidate" -c "" >/dev/null 2>&1; then py=$candidate; break; fi
    done
    if [ -z "$py" ]; then echo "gpu_run.sh: no python$GPU_PYTHON here to build the GPU's cache with" >&2; return 2; fi
    if [ ! -x "$rec/bin/python" ]; then bash benchmarks/triton36_venv.sh || return 2; fi
    if [ ! -x "$cc/bin/python" ]; then
        "$py" -m venv "$cc" && "$cc/bin/pip" install -q "triton==$GPU_TRITON" || return 2
    fi
    local plan=.triton-cache.plan.json
    env -u TRITON_INTERPRET "$rec/bin/python" -m unet_fast.gpu.plan record "$plan" --arch sm_90 || return 2
    rm -rf .triton-cache
    env -u TRITON_INTERPRET "$cc/bin/python" benchmarks/build_triton_cache.py "$plan" .triton-cache || return 2
    echo "in .triton-cache: $(count_our_kernels) kernels, $(count_launchers) launchers ($(du -sh .triton-cache | cut -f1)); carry it: run(carry=[\".triton-cache\"])"
}

count_our_kernels() {  # compiled up_concat kernels in the cache
    find "$REPO/.triton-cache" -name 'up_concat_*.cubin' 2>/dev/null | wc -l
}

count_launchers() {  # Triton's C launchers (one per kernel signature, built with gcc at first launch)
    find "$REPO/.triton-cache" -name '__triton_launcher*.so' 2>/dev/null | wc -l
}

if [ "${1:-}" = "--dry-run" ]; then dry_run; exit $?; fi
if [ $# -gt 0 ]; then echo "usage: bash benchmarks/gpu_run.sh [--dry-run]" >&2; exit 2; fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_run.sh: no GPU here (nvidia-smi -L failed); on a CPU machine run --dry-run" >&2
    exit 1
fi

OUT=${OUT:-$REPO/benchmarks/results/gpu-run-$(date -u +%Y%m%d-%H%M%S)}  # the device tool sets OUT
mkdir -p "$OUT"
LOG=$OUT/gpu_run.log
export TRITON_CACHE_DIR=$REPO/.triton-cache PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
START=$(date +%s)
# Triton's cache groups hold absolute paths: point them at this checkout's copy.
[ -d "$TRITON_CACHE_DIR" ] && python3 benchmarks/build_triton_cache.py --relocate "$TRITON_CACHE_DIR" >>"$LOG" 2>&1
CARRIED=$(count_our_kernels)
CARRIED_LAUNCHERS=$(count_launchers)
SUMMARY=()
say() { echo "$*" | tee -a "$LOG"; }

# The device machines have torch, triton and setuptools but reach no registry.
if ! python3 -c "import unet_fast.kernels" >/dev/null 2>&1; then
    pip install --no-deps --no-build-isolation -e . >>"$LOG" 2>&1
fi
say "gpu_run.sh at $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), budget ${BUDGET_S} s; carried in .triton-cache: $CARRIED of our kernels, $CARRIED_LAUNCHERS launchers"

estimate() {  # estimate NAME: a part's seconds, from PARTS
    local p name est what
    for p in "${PARTS[@]}"; do
        read -r name est what <<<"$p"
        if [ "$name" = "$1" ]; then echo "$est"; return; fi
    done
}

part() {  # part NAME COMMAND...: run unless its estimate cannot end inside the budget
    local name=$1 est elapsed rc before launchers
    est=$(estimate "$name")
    shift
    elapsed=$(( $(date +%s) - START ))
    if [ $((elapsed + est)) -gt "$BUDGET_S" ]; then
        say "== $name: skipped (at ${elapsed} s, ~${est} s more would pass the ${BUDGET_S} s budget)"
        SUMMARY+=("{\"part\": \"$name\", \"status\": \"skipped\", \"at_s\": $elapsed}")
        write_summary
        return
    fi
    before=$(count_our_kernels)
    launchers=$(count_launchers)
    say "== $name (at ${elapsed} s, estimated ${est} s)"
    # A part past the budget (plus a grace of 30 s) is stopped; the functions below run in bash -c.
    timeout $((BUDGET_S - elapsed + 30)) bash -c '"$@"' part "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - START - elapsed )) compiled=$(( $(count_our_kernels) - before ))
    launchers=$(( $(count_launchers) - launchers ))
    say "== $name: exit $rc in ${took} s; compiled on the GPU: $compiled of our kernels, $launchers Triton launchers (Inductor's count too)"
    SUMMARY+=("{\"part\": \"$name\", \"status\": \"exit $rc\", \"seconds\": $took, \"kernels_compiled_here\": $compiled, \"launchers_compiled_here\": $launchers}")
    write_summary
}

write_summary() {
    local IFS=,
    printf '{"carried_kernels": %s, "carried_launchers": %s, "budget_s": %s, "parts": [%s]}\n' \
        "$CARRIED" "$CARRIED_LAUNCHERS" "$BUDGET_S" "${SUMMARY[*]}" >"$OUT/summary.json"
}

env_part() {
    python3 -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
    nvidia-smi
    unet-fast check
}

bench() {  # bench NAME [unet-fast bench options]: JSON straight into $OUT
    local name=$1
    shift
    unet-fast bench --no-progress --json "$OUT/$name.json" "$@"
}

steps_part() {
    bench steps --case up3,up2,up1 --dtype bfloat16 --layout channels_last --mode forward,backward,full \
        --provider fused,eager,compiled --compile-mode default
    bench steps-fp32 --case up3,up2,up1 --dtype float32 --layout contiguous --mode forward \
        --provider fused,eager,compiled --compile-mode default
}

export OUT
export -f env_part bench steps_part
part env env_part
part tests python3 -m pytest tests -m gpu -q -p no:cacheprovider
part steps steps_part
part model bench model --case unet --dtype bfloat16 --layout channels_last --provider fused,eager
part compiled bench model-compiled --case unet --dtype bfloat16 --layout channels_last \
    --provider compiled,fused-compiled --compile-mode default
say "gpu_run.sh: done at $(( $(date +%s) - START )) s; files in $OUT"
