#!/usr/bin/env bash
# The one command a GPU machine runs, once, first: about 8 minutes of measuring on a warm H100
# (benchmarks/README.md).
#
#   bash benchmarks/gpu_run.sh             on the GPU machine (copy .triton-cache and
#                                          .interop-wheels there with the checkout)
#   bash benchmarks/gpu_run.sh --dry-run   here, before: builds both, prints the plan, counts the
#                                          launches the built cache would miss
#
# Parts, in order of value; each writes its files into $OUT (the folder to bring back from the
# GPU machine) the moment it ends, so a run cut short still returns what it finished, and a part that
# cannot finish inside the budget (GPU_RUN_BUDGET_S, default 480 s) is not started:
#   1 env       versions, nvidia-smi, the Triton cache's identity against this Triton's, unet-fast check
#               and how many of its kernels the carried cache held
#   2 tests     pytest -m gpu: compiled correctness (tests/test_compiled_correctness.py, torch.compile of UNet)
#   3 steps     decoder steps, batch 8, bf16 channels_last fwd/bwd/fwd+bwd, fused vs eager vs
#               torch.compile; fp32 contiguous forward; nnU-Net's 3-D steps (batch 2, 128^3), bf16
#               channels_last_3d, fused vs eager
#   4 model     UNet 512x512 batch 8 bf16 channels_last, inference and a training step, fused
#               vs the eager reference, peak memory
#   5 networks  nnU-Net's 3d_fullres PlainConvUNet and MONAI's BasicUNet 3D, batch 2 of 128^3,
#               bf16 channels_last_3d, inference and a training step, unet_fast.fuse against
#               unfused, peak memory (MONAI and nnU-Net's library installed from .interop-wheels)
# (The whole UNet under torch.compile is `unet-fast bench --case unet --provider compiled,fused-compiled`:
# two max-size Inductor compiles do not fit the window.)
# Files back: gpu_run.log (everything printed), summary.json (parts, seconds, kernels compiled on
# the GPU), steps.json, steps-fp32.json, steps-3d.json, model.json, networks.json.
# Here, afterwards: copy the JSON into benchmarks/results/ (keep the names the script prints) and
# run `python benchmarks/render_results.py`.
#
# The GPU machines run Python 3.12 and Triton 3.6.0 and reach no registry. Compiling our kernels
# there would cost minutes of the window, so --dry-run compiles them here into .triton-cache
# (git-ignored) with that Python and that Triton, for exactly the launches the run makes: the plan
# is recorded by running each part's own code on this CPU (unet_fast/gpu/plan.py, record.py); the
# run reports how many of our kernels it still had to compile. A cache built by another Triton
# (another triton_key() or ptxas) would miss everything: the env part says so in its first
# seconds and the run stops after the env and tests parts instead of compiling for minutes.
# Exit status: 0 when every part that ran passed; 1 when one failed (or the install did); 2 usage.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET_S=${GPU_RUN_BUDGET_S:-480}
CACHE=${GPU_RUN_CACHE:-$REPO/.triton-cache}  # the carried cache (tests point it elsewhere)
GPU_TRITON=3.6.0
GPU_PYTHON=3.12
# Triton's own ptxas, before anything runs: torch 2.11's cu130 wheel ships torch/bin/ptxas and
# Inductor's first compile points TRITON_PTXAS_PATH at it; the ptxas version is part of Triton's
# cache key, so kernels compiled after that would miss the carried cache.
triton_ptxas() {  # triton_ptxas [PYTHON]: the ptxas inside that interpreter's Triton (default python3)
    "${1:-python3}" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))' 2>/dev/null
}
# name  estimated seconds (warm H100/H200, kernels from the cache)  what
PARTS=(
    "env      40  versions, nvidia-smi, Triton cache identity, python3 -m unet_fast check"
    "tests    130 pytest -m gpu: compiled correctness (2-D steps, nnU-Net 3-D steps as timed), torch.compile of UNet, offsets past 2**31, a training step"
    "steps    210 27 step rows: 3 steps x bf16 channels_last x 3 modes x fused/eager/compiled (compile mode default), + 3x3 fp32 forward rows, + 36 nnU-Net 3-D rows: 6 steps x bf16 channels_last_3d x 3 modes x fused/eager"
    "model    40  UNet 512x512 b8 bf16 channels_last: inference + training step, fused vs eager"
    "networks 60  nnU-Net 3d_fullres + MONAI BasicUNet 3D, 2x128^3 bf16 channels_last_3d: inference + training step, fused vs unfused"
)
WHEELS=${GPU_RUN_WHEELS:-$REPO/.interop-wheels}  # the carried wheels of MONAI and nnU-Net's library

count_our_kernels() {  # compiled up_concat kernels in the cache
    find "$CACHE" -name 'up_concat_*.cubin' 2>/dev/null | wc -l
}

count_launchers() {  # Triton's C launchers (one per kernel signature, built with gcc at first launch)
    find "$CACHE" -name '__triton_launcher*.so' 2>/dev/null | wc -l
}

planned_for() {  # planned_for PART: kernels the carried cache's plan holds for PART
    python3 - "$1" "$CACHE/unet_fast_plan.json" <<'PY' 2>/dev/null || echo 0
import json, sys
plan = json.load(open(sys.argv[2]))
print(sum(sys.argv[1] in s.get("parts", ()) for s in plan["specializations"]))
PY
}

print_plan() {
    echo "the GPU run's parts (budget ${BUDGET_S} s of run time on a warm GPU; estimates from the row"
    echo "counts, not measured: ~1 s per benchmark row, ~10 s per torch.compile, ~3 s per test,"
    echo "~5 s per whole-network row):"
    local total=0 p name est what
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
}

dry_run() {
    echo "gpu_run.sh --dry-run:"
    print_plan
    # The Triton cache for the GPU machines: record the launches with Triton $GPU_TRITON and torch,
    # by running the parts' own code here, then compile them with Python $GPU_PYTHON and Triton
    # $GPU_TRITON alone; then count what a cache built from the plan misses.
    local rec=.venv-triton36 cc=.venv-gpu-cache py CACHE=$REPO/.triton-cache
    py=""
    for candidate in "python$GPU_PYTHON" "$HOME"/.pyenv/versions/"$GPU_PYTHON".*/bin/python; do
        # A pyenv shim exists without the version behind it: ask each candidate to run.
        if "$candidate" -c "" >/dev/null 2>&1; then py=$candidate; break; fi
    done
    if [ -z "$py" ]; then echo "gpu_run.sh: no python$GPU_PYTHON here to build the GPU's cache with" >&2; return 2; fi
    if [ ! -x "$rec/bin/python" ]; then bash benchmarks/triton_venv.sh "$GPU_TRITON" || return 2; fi
    [ -d "$WHEELS" ] || bash benchmarks/interop_wheels.sh "$WHEELS" >/dev/null || return 2
    install_wheels "$rec/bin/python" || return 2
    if [ ! -x "$cc/bin/python" ]; then
        "$py" -m venv "$cc" && "$cc/bin/pip" install -q "triton==$GPU_TRITON" || return 2
    fi
    local plan=.triton-cache.plan.json parts=${GPU_PLAN_PARTS:-env,tests,steps,model,networks}
    # GPU_PLAN_PARTS: the parts to record (default all); each part's launches are written as it
    # ends, so a part that cannot finish here leaves the plan of the parts before it, and the
    # build goes on with a warning.
    env -u TRITON_INTERPRET "$rec/bin/python" -m unet_fast.gpu.plan record "$plan" --arch sm_90 --parts "$parts"
    local recorded=$?
    [ -s "$plan" ] || return 2
    [ "$recorded" -eq 0 ] || echo "gpu_run.sh --dry-run: the recording stopped (exit $recorded); the plan holds the parts that ended: $("$rec/bin/python" -c 'import json, sys; print(", ".join(json.load(open(sys.argv[1]))["parts"]))' "$plan")" >&2
    rm -rf .triton-cache
    env -u TRITON_INTERPRET TRITON_PTXAS_PATH="$(triton_ptxas "$cc/bin/python")" \
        "$cc/bin/python" benchmarks/build_triton_cache.py "$plan" .triton-cache
    local built=$?
    [ "$built" -eq 0 ] || [ "$built" -eq 3 ] || return 2
    "$cc/bin/python" - "$plan" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))
specs = plan["specializations"]
print(f"plan: {len(specs)} kernel specializations for sm_{plan['capability']}, recorded from the parts (Triton {plan['triton']}):")
for part in ("env", "tests", "steps", "model", "networks"):
    if part in plan["parts"]:
        print(f"  {part:9s} {sum(part in s['parts'] for s in specs):4d} kernels  (recording exit {plan['status'][part]})")
    else:
        print(f"  {part:9s}    - not recorded here: what it launches beyond the parts above compiles on the GPU")
PY
    echo "in .triton-cache: $(count_our_kernels) kernels, $(count_launchers) launchers ($(du -sh .triton-cache | cut -f1)); copy it and .interop-wheels to the GPU machine with the checkout"
    echo "the cache's identity (the env part on the GPU prints the same lines for its Triton):"
    TRITON_PTXAS_PATH="" "$cc/bin/python" - <<'PY'
import json
from importlib.machinery import SourceFileLoader
b = SourceFileLoader("build_triton_cache", "benchmarks/build_triton_cache.py").load_module()
b.print_identity(json.load(open(".triton-cache/" + b.IDENTITY_FILE)), "cache built by")
PY
    # The parts again, each launch compiled for sm_90 against a cache built from the same plan:
    # every kernel compiled then is one the GPU would compile in its window. That cache is built
    # with the recording venv's Python: Triton's key hashes its compiled library, which differs
    # from one Python version to the next, so the GPU's own cache (Python $GPU_PYTHON) would miss
    # everything there; the env part on the GPU checks that key against the GPU's Triton.
    local check missed
    check=$(mktemp -d)
    env -u TRITON_INTERPRET "$rec/bin/python" benchmarks/build_triton_cache.py "$plan" "$check/cache" >/dev/null
    env -u TRITON_INTERPRET "$rec/bin/python" -m unet_fast.gpu.plan check-cache "$check/cache" --arch sm_90 \
        --parts "$parts" 2>&1 | grep -E "^check-cache:"
    missed=${PIPESTATUS[0]}
    rm -rf "$check"
    [ "$built" -eq 0 ] || { echo "gpu_run.sh --dry-run: some planned kernels did not compile (above)" >&2; return 1; }
    [ "$missed" -eq 0 ] || { echo "gpu_run.sh --dry-run: the built cache misses launches of the parts (above)" >&2; return 1; }
}

install_wheels() {  # install_wheels PYTHON: MONAI and nnU-Net's library from the carried wheels
    "$1" -c "import monai, dynamic_network_architectures" >/dev/null 2>&1 && return 0
    local log
    log=$(mktemp)
    # Every wheel in the folder: benchmarks/interop_wheels.sh chose them (and their versions).
    "$1" -m pip install --quiet --no-deps --no-index "$WHEELS"/*.whl >"$log" 2>&1 || tail -n 3 "$log"
    rm -f "$log"
    "$1" -c "import monai, dynamic_network_architectures"  # its error, if any, is the part's last words
}

if [ "${1:-}" = "--dry-run" ]; then dry_run; exit $?; fi
if [ $# -gt 0 ]; then echo "usage: bash benchmarks/gpu_run.sh [--dry-run]" >&2; exit 2; fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_run.sh: no GPU here (nvidia-smi -L failed); on a CPU machine run --dry-run" >&2
    exit 1
fi

TRITON_PTXAS_PATH=$(triton_ptxas)
export TRITON_PTXAS_PATH
OUT=${OUT:-$REPO/benchmarks/results/gpu-run-$(date -u +%Y%m%d-%H%M%S)}  # the folder the files go to (OUT=DIR to choose)
mkdir -p "$OUT"
LOG=$OUT/gpu_run.log
STATE=$(mktemp -d)
export TRITON_CACHE_DIR=$CACHE PYTHONUNBUFFERED=1 STATE CACHE
unset TRITON_INTERPRET
START=$(date +%s)
# Triton's cache groups hold absolute paths: point them at this checkout's copy.
[ -d "$TRITON_CACHE_DIR" ] && python3 benchmarks/build_triton_cache.py --relocate "$TRITON_CACHE_DIR" >>"$LOG" 2>&1
CARRIED=$(count_our_kernels)
CARRIED_LAUNCHERS=$(count_launchers)
SUMMARY=()
FAILED=()
STOPPED=""
say() { echo "$*" | tee -a "$LOG"; }

write_summary() {
    local IFS=,
    printf '{"carried_kernels": %s, "carried_launchers": %s, "budget_s": %s, "stopped": "%s", "parts": [%s]}\n' \
        "$CARRIED" "$CARRIED_LAUNCHERS" "$BUDGET_S" "$STOPPED" "${SUMMARY[*]}" >"$OUT/summary.json"
}

# The device machines have torch, triton and setuptools but reach no registry.
if ! python3 -c "import unet_fast.kernels" >/dev/null 2>&1; then
    say "installing the project: python3 -m pip install --no-deps --no-build-isolation -e ."
    python3 -m pip install --no-deps --no-build-isolation -e . 2>&1 | tee -a "$LOG" | tail -n 5
fi
if ! python3 -c "import unet_fast.kernels" >>"$LOG" 2>&1; then
    say "gpu_run.sh: the install failed: python3 cannot import unet_fast.kernels (pip's output above and in $LOG); no part can run"
    STOPPED="install failed"
    write_summary
    exit 1
fi
say "gpu_run.sh at $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown), budget ${BUDGET_S} s; carried in .triton-cache: $CARRIED of our kernels, $CARRIED_LAUNCHERS launchers; TRITON_PTXAS_PATH=$TRITON_PTXAS_PATH"

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
    if [ -n "$STOPPED" ]; then
        say "== $name: not run ($STOPPED)"
        SUMMARY+=("{\"part\": \"$name\", \"status\": \"not run\", \"at_s\": $elapsed}")
        write_summary
        return
    fi
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
    [ "$rc" -eq 0 ] || FAILED+=("$name")
    SUMMARY+=("{\"part\": \"$name\", \"status\": \"exit $rc\", \"seconds\": $took, \"kernels_compiled_here\": $compiled, \"launchers_compiled_here\": $launchers}")
    write_summary
}

need_cuda() {  # the parts below measure a GPU: stop at once, with one line, where torch sees none
    python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' && return 0
    echo "no CUDA: torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null) sees no GPU; this part measures one"
    return 1
}

env_part() {
    python3 -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
    nvidia-smi
    # The cache's identity against this Triton's: a foreign cache misses every kernel.
    python3 benchmarks/build_triton_cache.py --identity "$TRITON_CACHE_DIR"
    local same=$? before compiled planned
    [ "$same" -eq 0 ] || echo "foreign" >"$STATE/cache"
    need_cuda || return 1
    before=$(count_our_kernels)
    python3 -m unet_fast check --device cuda
    local rc=$?
    compiled=$(( $(count_our_kernels) - before ))
    planned=$(planned_for env)
    echo "first launch (python3 -m unet_fast check): $(( planned > compiled ? planned - compiled : 0 )) of its $planned planned kernels found in the carried cache; $compiled compiled here"
    return $rc
}

bench() {  # bench NAME COMMAND [its options]: a unet-fast benchmark command, JSON straight into $OUT
    local name=$1 command=$2 quiet=()
    shift 2
    [ "$command" = bench ] && quiet=(--no-progress)
    python3 -m unet_fast "$command" --device cuda "${quiet[@]}" --json "$OUT/$name.json" "$@"
}

bench_part() {  # bench_part PART: the part's benchmark commands, listed once in unet_fast/gpu/plan.py
    need_cuda || return 1
    local rc=0 name command args
    while read -r name command args; do
        # shellcheck disable=SC2086  # the arguments are plain words
        bench "$name" "$command" $args || rc=1
    done < <(python3 -m unet_fast.gpu.plan bench-calls "$1")
    return $rc
}

networks_part() {
    need_cuda || return 1
    if ! install_wheels python3; then
        echo "networks: MONAI / nnU-Net's library could not be installed from $WHEELS (carry .interop-wheels, made by --dry-run)"
        return 1
    fi
    bench_part networks
}

tests_part() {
    need_cuda || return 1
    # The unet_fast.fuse tests need MONAI and nnU-Net's libraries, which the GPU machine lacks
    # (and none of them is marked gpu): left out rather than failing at import.
    # -o addopts="": pytest.ini's options name pytest-xdist and pytest-benchmark (not on the GPU machine).
    python3 -m pytest tests -m gpu -q -p no:cacheprovider -o addopts="" --ignore-glob="tests/test_fuse_*"
}

export OUT
export -f env_part bench bench_part tests_part networks_part install_wheels need_cuda count_our_kernels planned_for
export REPO WHEELS
part env env_part
part tests tests_part
if [ -s "$STATE/cache" ] || [ "$CARRIED" -eq 0 ]; then
    STOPPED="the carried Triton cache is $( [ "$CARRIED" -eq 0 ] && echo missing || echo foreign ): every kernel would compile here; stopped after env and tests rather than spend the window compiling (GPU_RUN_FORCE=1 runs on)"
    [ "${GPU_RUN_FORCE:-0}" = 1 ] && STOPPED=""
    [ -n "$STOPPED" ] && say "gpu_run.sh: $STOPPED"
fi
part steps bench_part steps
part model bench_part model
part networks networks_part
rm -rf "$STATE"
say "gpu_run.sh: done at $(( $(date +%s) - START )) s; files in $OUT; $( [ ${#FAILED[@]} -eq 0 ] && echo "every part that ran passed" || echo "FAILED: ${FAILED[*]}")"
[ ${#FAILED[@]} -eq 0 ]
