"""The GPU run's Triton cache covers what the run launches: 0 misses, compiled for sm_90 here.

The plan is recorded from the parts' own code in record mode (unet_fast/gpu/record.py): every
launch compiled-not-run for sm_90, as Triton's serialized specialization. Here:

- a representative slice of a part (the env part's decoder step, `unet-fast check`'s CHECK_STEP,
  in bf16 channels_last with the model's channels_last weight, and in float32 with TF32 on;
  forward and backward, the incoming gradient contiguous as `torch.randn(out.shape)` makes it
  and channels_last as `randn_like(out)` makes it) is recorded, the cache is built from that plan
  by benchmarks/build_triton_cache.py with one recorded specialization dropped, and the same
  code then runs with Triton really compiling each launch for sm_90 against that cache: exactly
  one kernel is compiled (a miss), the dropped one; every other launch finds its kernel. The full
  plan (all five parts, about 150 kernels) takes a CPU many minutes to record and compile, so
  CI compiles this slice (about 20 kernels, a minute on 2 cores); `gpu_run.sh --dry-run`
  records and builds the full plan the same way.
- the bench parts are recorded at the GPU's sizes (the bench's GPU defaults): smaller sizes
  record other kernels (the autotuner prunes by size; the weight gradient's split count follows
  the pixel count), which an earlier plan at batch 2 showed.
Subprocesses throughout: this process interprets the kernels (TRITON_INTERPRET=1, conftest.py).
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("triton")

SLICE = """
import json, os, sys
import torch
from unet_fast import up_concat
from unet_fast.cases import CHECK_STEP as c
from unet_fast.gpu.record import Recorder, record_mode

def part_slice():
    for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True)):
        torch.backends.cudnn.allow_tf32 = tf32
        fmt = torch.channels_last
        x = torch.randn(c.n, c.cin, c.h, c.w, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        skip = torch.randn(c.n, c.cs, 2 * c.h, 2 * c.w, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        up = torch.nn.ConvTranspose2d(c.cin, c.cout, 2, 2).to(dtype=dtype, memory_format=fmt)
        out = up_concat(x, skip, up.weight, up.bias)
        for grad in (torch.randn(out.shape, dtype=dtype), torch.randn_like(out)):
            torch.autograd.grad(out, (x, skip, up.weight, up.bias), grad, retain_graph=True)

mode, path = sys.argv[1], sys.argv[2]
recorder = Recorder()
recorder.part = "slice"
with record_mode(90, recorder, compile=(mode == "compile")):
    part_slice()
if mode == "record":
    import triton
    json.dump(dict(triton=triton.__version__, capability=90, parts=["slice"], status={"slice": 0},
                   specializations=recorder.specializations()), open(path, "w"))
"""




def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_CACHE_DIR")}
    env.update(TRITON_INTERPRET="0", **extra)
    return env


def _run(code, *args, **env):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cubins(folder):
    return {os.path.relpath(os.path.join(d, f), folder)
            for d, _, files in os.walk(folder) for f in files if f.endswith(".cubin")}


def test_a_cache_built_from_the_recorded_plan_has_every_launch_and_misses_a_dropped_one(tmp_path):
    plan_path, cache = tmp_path / "plan.json", tmp_path / "cache"
    _run(SLICE, "record", plan_path, TRITON_CACHE_DIR=str(tmp_path / "unused"))
    plan = json.loads(plan_path.read_text())
    specs = plan["specializations"]
    kernels = {s["kernel"] for s in specs}
    assert {"up_concat_forward_kernel", "up_concat_backward_input_kernel"} <= {k.removesuffix("_autotuned")
                                                                              for k in kernels}, kernels
    # Drop one: the part still launches it, so compiling the part against the cache must miss it.
    dropped = max(specs, key=lambda s: s["kernel"] == "up_concat_forward_kernel")
    plan["specializations"] = [s for s in specs if s is not dropped]
    plan_path.write_text(json.dumps(plan))
    build = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "build_triton_cache.py"),
                            str(plan_path), str(cache)], cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    built = _cubins(cache)
    assert len(built) == len(specs) - 1
    # The part, compiled for sm_90 against the cache: one miss, the dropped specialization.
    _run(SLICE, "compile", tmp_path / "unused.json", TRITON_CACHE_DIR=str(cache))
    missed = _cubins(cache) - built
    assert len(missed) == 1, f"{len(missed)} launches of the part missed the cache: {sorted(missed)}"
    assert os.path.basename(next(iter(missed))).startswith(dropped["kernel"].removesuffix("_autotuned"))


def test_the_bench_parts_are_recorded_at_the_gpu_s_sizes():
    """Sizes reach the kernels beyond Triton's 1-or-multiple-of-16 (the autotuner's pruning, the
    weight gradient's split count): the plan records the bench rows at the bench's GPU defaults."""
    from unet_fast.bench import cli
    from unet_fast.gpu import plan
    assert plan.RECORD_SIZES == plan.GPU_SIZES == {k: cli.GPU[k] for k in plan.GPU_SIZES}
    for k, v in plan.GPU_SIZES.items():
        assert f"--{k.replace('_', '-')} {v}" in plan.RECORD_BENCH_OPTIONS


def test_record_mode_leaves_the_op_as_it_found_it():
    code = ("import os\nimport torch\nfrom unet_fast.ops import up_concat_op\n"
            "from unet_fast.kernels import up_concat_launch as L\n"
            "from unet_fast.gpu.record import Recorder, record_mode\n"
            "before = (up_concat_op.uses_triton, L.launch_forward, L.launch_backward, L._recorder)\n"
            "with record_mode(90, Recorder()):\n"
            "    assert up_concat_op.uses_triton(torch.empty(0))\n"
            "assert before == (up_concat_op.uses_triton, L.launch_forward, L.launch_backward, L._recorder)\n"
            "assert not up_concat_op.uses_triton(torch.empty(0))\n")
    _run(code)
