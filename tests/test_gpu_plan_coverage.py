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
  the pixel count), which an earlier plan at batch 2 showed. They run on the meta device (no
  memory, no arithmetic), which launches exactly what CPU tensors of the same shapes do (checked
  on the slice); the model part (a UNet at batch 8 on 512x512) is recorded so, built into a cache
  without one of its kernels, and `plan check-cache` must count exactly that one miss.
Subprocesses throughout: this process interprets the kernels (TRITON_INTERPRET=1, conftest.py).
"""
import json
import os
import subprocess
import sys

import pytest

from unet_fast.gpu.plan import compiled_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("triton")

SLICE = """
import json, os, sys
import torch
from unet_fast import up_concat
from unet_fast.cases import CHECK_STEP as c
from unet_fast.gpu.record import Recorder, record_mode

def part_slice(device):
    for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True)):
        torch.backends.cudnn.allow_tf32 = tf32
        fmt = torch.channels_last
        x = torch.randn(c.n, c.cin, c.h, c.w, dtype=dtype, device=device).contiguous(memory_format=fmt)
        skip = torch.randn(c.n, c.cs, 2 * c.h, 2 * c.w, dtype=dtype, device=device).contiguous(memory_format=fmt)
        x, skip = x.requires_grad_(), skip.requires_grad_()
        up = torch.nn.ConvTranspose2d(c.cin, c.cout, 2, 2).to(device=device, dtype=dtype, memory_format=fmt)
        out = up_concat(x, skip, up.weight, up.bias)
        for grad in (torch.randn(out.shape, dtype=dtype, device=device), torch.randn_like(out)):
            torch.autograd.grad(out, (x, skip, up.weight, up.bias), grad, retain_graph=True)

mode, path = sys.argv[1], sys.argv[2]
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
recorder = Recorder()
recorder.part = "slice"
with record_mode(90, recorder, compile=(mode == "compile")):
    part_slice(device)
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


def _build_cache(plan_path, cache) -> set:
    """benchmarks/build_triton_cache.py's cache of a plan; its compiled kernels."""
    build = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "build_triton_cache.py"),
                            str(plan_path), str(cache)], cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    return compiled_kernels(cache)


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
    built = _build_cache(plan_path, cache)
    assert len(built) == len(specs) - 1
    # The part, compiled for sm_90 against the cache: one miss, the dropped specialization.
    _run(SLICE, "compile", tmp_path / "unused.json", TRITON_CACHE_DIR=str(cache))
    missed = compiled_kernels(cache) - built
    assert len(missed) == 1, f"{len(missed)} launches of the part missed the cache: {sorted(missed)}"
    assert os.path.basename(next(iter(missed))).startswith(dropped["kernel"].removesuffix("_autotuned"))


def test_the_bench_parts_are_recorded_at_the_gpu_s_sizes():
    """Sizes reach the kernels beyond Triton's 1-or-multiple-of-16 (the autotuner's pruning, the
    weight gradient's split count): the plan records the bench rows at the bench's GPU defaults,
    and the networks run at the sizes its GPU call names, on the meta device."""
    from unet_fast.bench import cli
    from unet_fast.gpu import plan
    assert plan.RECORD_SIZES == plan.GPU_SIZES == {k: cli.GPU[k] for k in plan.GPU_SIZES}
    for k, v in plan.GPU_SIZES.items():
        assert f"--{k.replace('_', '-')} {v}" in plan.RECORD_OPTIONS["bench"]
    for part, calls in plan.BENCH_CALLS.items():
        for _name, command, arguments in calls:
            words = plan._recorded_words(command, arguments)
            assert words[0] == command and "--device meta" in " ".join(words)
            kept = [w for w in arguments.split() if "eager" not in w]  # the provider list: its fused ones only
            assert all(w in words for w in kept)
    networks, = plan.BENCH_CALLS["networks"]
    assert plan._recorded_words(*networks[1:])[1:5] == "--dtype bf16 --layout channels_last".split()


def test_meta_tensors_launch_exactly_what_cpu_tensors_of_their_shapes_launch(tmp_path):
    """The bench parts record on the meta device (no memory at the GPU's sizes): the slice run on
    meta tensors records the same specializations as on CPU tensors, forward and backward, with
    both gradient layouts; and record mode leaves the meta device's fake kernels as they were."""
    keys = {}
    for device in ("cpu", "meta"):
        path = tmp_path / f"{device}.json"
        _run(SLICE, "record", path, device, TRITON_CACHE_DIR=str(tmp_path / "unused"))
        keys[device] = {s["specialization"] for s in json.loads(path.read_text())["specializations"]}
    assert len(keys["cpu"]) >= 6 and keys["meta"] == keys["cpu"]
    code = ("import torch\nfrom unet_fast import up_concat\nfrom unet_fast.gpu.record import Recorder, record_mode\n"
            "x, s, w = (torch.empty(*shape, device='meta') for shape in ((1, 4, 3, 3), (1, 2, 6, 6), (4, 3, 2, 2)))\n"
            "with record_mode(90, Recorder()) as r:\n"
            "    up_concat(x, s, w)\n"
            "assert r.launches == 1, r.launches\n"
            "up_concat(x, s, w)  # the fake kernel again: nothing launches outside the block\n"
            "assert r.launches == 1, r.launches\n")
    _run(code)


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


def test_the_model_part_at_the_gpu_s_sizes_misses_only_what_its_cache_lacks(tmp_path):
    """The model part (UNet, batch 8, 512x512, bf16 channels_last, inference and a training step:
    tens of GB on CPU tensors) recorded on the meta device, its cache built without one of its
    kernels, and `check-cache` running the part against that cache: exactly that kernel missed,
    and the command says so with exit 1."""
    plan_path, cache = tmp_path / "plan.json", tmp_path / "cache"
    record = subprocess.run([sys.executable, "-m", "unet_fast.gpu.plan", "record", str(plan_path), "--parts", "model"],
                            cwd=REPO, env=_env(TRITON_CACHE_DIR=str(tmp_path / "unused")), capture_output=True,
                            text=True, timeout=900)
    assert record.returncode == 0, record.stderr[-3000:]
    plan = json.loads(plan_path.read_text())
    assert plan["status"] == {"model": 0} and len(plan["specializations"]) >= 6
    dropped = plan["specializations"].pop()
    plan_path.write_text(json.dumps(plan))
    built = _build_cache(plan_path, cache)
    check = subprocess.run([sys.executable, "-m", "unet_fast.gpu.plan", "check-cache", str(cache), "--parts", "model"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert check.returncode == 1, check.stderr[-3000:]
    assert "check-cache: model: 1 kernels compiled" in check.stderr, check.stderr[-3000:]
    missed, = compiled_kernels(cache) - built
    assert os.path.basename(missed).startswith(dropped["kernel"].removesuffix("_autotuned"))
