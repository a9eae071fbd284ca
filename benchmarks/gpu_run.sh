#!/usr/bin/env bash
# The one script a session with a GPU runs, so scarce GPU time goes to measuring, not setting up.
#
# The device tool gives at most 10 minutes per command and 30 minutes per session, and starts a
# fresh copy of the working tree per command, so the work is split into stages, each well under
# 10 minutes, each writing its own JSON (benchmarks/render_results.py merges them per device).
# Call them in this order, one command each, and stop when the budget runs out; the first three
# are what matters most:
#
#   bash benchmarks/gpu_run.sh test          # install, nvidia-smi, unet-fast check, compiled test suite
#   bash benchmarks/gpu_run.sh steps         # decoder steps, fused vs eager, all dtypes/layouts/modes
#   bash benchmarks/gpu_run.sh model         # whole UNet, fused vs eager, all dtypes/layouts, infer+train
#   bash benchmarks/gpu_run.sh compiled      # torch.compile(reference) on the steps, bf16 channels_last + fp32
#   bash benchmarks/gpu_run.sh model-compiled  # compiled UNet / ReferenceUNet, bf16 channels_last (slow compiles)
#   bash benchmarks/gpu_run.sh pytest-bench  # pytest benchmarks/ --benchmark-disable (they still run)
#
# Each stage copies its JSON, plot and log into $OUT when the device tool sets it (that folder comes
# back to the calling machine); copy them into benchmarks/results/ there and run
# `python benchmarks/render_results.py` to refresh benchmarks/RESULTS.md. Nothing here is run on
# the CPU: without a GPU the script stops at once.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-steps}"

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_run.sh: no GPU here (nvidia-smi -L failed); nothing to do" >&2
    exit 1
fi

# FACTS.md: the device machines have torch, triton and setuptools but reach no registry; an
# editable install without dependencies is what makes unet_fast.kernels importable.
if ! python -c "import unet_fast.kernels" >/dev/null 2>&1; then
    pip install --no-deps --no-build-isolation -e . >/dev/null
fi

gpu=$(python -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
stem="benchmarks/results/${gpu}-$(date -u +%Y%m%d)-${commit}"
mkdir -p benchmarks/results

keep() {  # copy results to $OUT so they survive the device machine
    if [ -n "${OUT:-}" ]; then cp "$@" "$OUT"/ 2>/dev/null || true; fi
}

bench() {  # bench <stage-name> <unet-fast bench options...>
    local name="$1" rc=0; shift
    unet-fast bench --no-progress --json "${stem}-${name}.json" --plot "${stem}-${name}.png" "$@" \
        2>&1 | tee "${stem}-${name}.log" || rc=$?
    # kept even when rows failed (rc 1): the failed rows carry their error in the JSON
    keep "${stem}-${name}.json" "${stem}-${name}.png" "${stem}-${name}.log"
    if [ "$rc" -ne 0 ]; then echo "gpu_run.sh: bench $name exited $rc (see the rows' notes)" >&2; fi
}

case "$stage" in
    test)
        nvidia-smi
        python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
        unet-fast check
        # tests/conftest.py leaves TRITON_INTERPRET unset on a GPU: this is the compiled suite.
        rc=0
        python -m pytest tests/ -x -q 2>&1 | tee "${stem}-tests.log" || rc=$?
        keep "${stem}-tests.log"
        exit $rc
        ;;
    quick)
        bench quick --quick
        ;;
    steps)
        bench steps --case up3,up2,up1 --provider fused,eager
        ;;
    model)
        bench model --case unet --provider fused,eager
        ;;
    compiled)
        bench compiled-bf16 --case up3,up2,up1 --provider compiled --dtype bfloat16 --layout channels_last
        bench compiled-fp32 --case up3,up2,up1 --provider compiled --dtype float32 --layout contiguous --mode full
        ;;
    model-compiled)
        bench model-compiled --case unet --provider compiled,fused-compiled --dtype bfloat16 --layout channels_last
        ;;
    pytest-bench)
        rc=0
        python -m pytest benchmarks/ --benchmark-disable -q 2>&1 | tee "${stem}-pytest-bench.log" || rc=$?
        keep "${stem}-pytest-bench.log"
        exit $rc
        ;;
    all)  # only where there is no per-command limit
        for s in test steps model compiled model-compiled pytest-bench; do bash "$0" "$s" || true; done
        ;;
    *)
        echo "gpu_run.sh: unknown stage '$stage' (test, quick, steps, model, compiled, model-compiled, pytest-bench, all)" >&2
        exit 2
        ;;
esac
