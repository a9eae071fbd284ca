"""Every up_concat kernel's int64-offset (IDX64) variant compiles for sm_90 on this CPU, with and
without ReLU and bias.

Triton's interpreter runs @triton.jit helpers as plain Python, so a helper the compiler refuses
(`as_offset` returning int64 in one branch and its argument unchanged, int32, in the other) passes
every interpreter test. Here the launchers' own launches of a 2-D and a 3-D step are compiled
(not run) for sm_90 with IDX64 forced on, in a subprocess without TRITON_INTERPRET (conftest.py
sets it in this process). The second test plants that old helper and checks the compile fails,
so this test would have caught it. The same compile shows the backward's two launches paired by
programmatic dependent launch on sm_90, and not before Hopper.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import triton
    import triton.language as tl
    from unet_fast.gpu.static_compile import configs_of
    import importlib, pkgutil
    from unet_fast import kernels
    from unet_fast.kernels.offline_target import offline_target
    from unet_fast.kernels.up_concat_launch import launch_backward, launch_forward, recording_launches

    @triton.jit
    def old_as_offset(v, IDX64: tl.constexpr):
        if IDX64:
            return v.to(tl.int64)
        return v

    if sys.argv[1] == "old":  # into every kernel module that imported the helper
        for info in pkgutil.iter_modules(kernels.__path__):
            module = importlib.import_module(f"unet_fast.kernels.{info.name}")
            if hasattr(module, "as_offset"):
                module.as_offset = old_as_offset

    rows = []

    def compile_idx64(kernel, grid, args, kwargs):
        fn, configs = configs_of(kernel, args, kwargs)
        kwargs = dict(kwargs, **configs[0])
        if "IDX64" in kwargs:
            kwargs["IDX64"] = True
        row = dict(kernel=fn.__name__, idx64=kwargs.get("IDX64", False), error=None, arch=capability)
        if capability != 90:  # recorded, not compiled: what the launch asks for
            rows.append(dict(row, launch_pdl=kwargs.get("launch_pdl", False),
                             flags=[kwargs.get(k) for k in ("DEPENDENT", "LET_NEXT_START") if k in kwargs]))
            return
        try:
            compiled = fn.warmup(*args, grid=grid, **kwargs)
            ptx = compiled.asm["ptx"]
            row.update(launch_pdl=compiled.metadata.launch_pdl, waits=ptx.count("griddepcontrol.wait"),
                       lets=ptx.count("griddepcontrol.launch_dependents"))
        except Exception as e:  # the compiler's reason is in the chained causes
            chain = []
            while e is not None and len(chain) < 8:
                chain.append(f"{type(e).__name__}: {e}")
                e = e.__cause__ or e.__context__
            row["error"] = " <- ".join(chain)
        rows.append(row)

    def step(spatial, k, dtype, fmt):
        x = torch.empty(2, 64, *spatial, dtype=dtype).contiguous(memory_format=fmt)
        skip = torch.empty(2, 32, *(s * kk for s, kk in zip(spatial, k)), dtype=dtype).contiguous(memory_format=fmt)
        w = torch.empty(64, 32, *k, dtype=dtype)
        b = torch.empty(32, dtype=dtype)
        out = launch_forward(x, skip, w, b, relu=True, skip_first=False)
        launch_backward(torch.empty_like(out), out, x, w, skip_first=True, has_bias=True)
        # Without ReLU or bias, as the op's autograd calls it (the upsampled channels' gradient
        # alone): the one-pass backward in bf16 channels_last, the two-kernel one otherwise.
        launch_backward(torch.empty_like(out)[:, :32], None, x, w, skip_first=False, has_bias=False)

    for capability in (90, 80):
        with offline_target(capability), recording_launches(compile_idx64):
            step((16, 16), (2, 2), torch.bfloat16, torch.channels_last)
            step((4, 8, 8), (1, 2, 2), torch.float32, torch.contiguous_format)
    print(json.dumps(rows))
''')

IDX64_KERNELS = {"up_concat_forward_kernel", "up_concat_backward_input_kernel", "up_concat_backward_weight_kernel",
                 "up_concat_backward_fused_kernel"}


def compile_for_sm90(tmp_path, mode: str) -> list:
    script = tmp_path / "compile_idx64.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / f"cache-{mode}")  # compile, do not reuse
    proc = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("compile")


@pytest.fixture(scope="module")
def compiled(tmp):
    return compile_for_sm90(tmp, "new")


def test_every_kernels_int64_variant_compiles_for_sm90(compiled):
    rows = [r for r in compiled if r["arch"] == 90]
    assert {r["kernel"] for r in rows if r["idx64"]} == IDX64_KERNELS
    assert "up_concat_weight_reduce_kernel" in {r["kernel"] for r in rows}
    for r in rows:
        assert r["error"] is None, r


def test_backward_input_is_a_programmatic_dependent_of_the_weight_gradient_on_sm90_only(compiled):
    """On sm_90 the weight gradient lets the next kernel start (launch_dependents, in its PTX) and
    backward_input is launched as a dependent (launch_pdl) whose sum programs wait before reading
    the partials and whose every program waits before it ends (two griddepcontrol.wait); no other
    kernel holds either. Before Hopper (no griddepcontrol) neither launch asks for it."""
    sm90 = [r for r in compiled if r["arch"] == 90]
    by_kernel = {}
    for r in sm90:
        by_kernel.setdefault(r["kernel"], set()).add((r["launch_pdl"], r["waits"], r["lets"]))
    assert by_kernel.pop("up_concat_backward_input_kernel") == {(True, 2, 0)}
    assert by_kernel.pop("up_concat_backward_weight_kernel") == {(False, 0, 1)}
    assert by_kernel and all(v == {(False, 0, 0)} for v in by_kernel.values()), by_kernel
    sm80 = [r for r in compiled if r["arch"] == 80]
    assert {r["kernel"] for r in sm80} >= {"up_concat_backward_input_kernel", "up_concat_backward_weight_kernel"}
    assert all(not r["launch_pdl"] and not any(r["flags"]) for r in sm80), sm80


def test_the_old_mixed_return_type_as_offset_fails_to_compile(tmp):
    """The check above is real: with the old helper planted, the IDX64 compiles fail."""
    rows = compile_for_sm90(tmp, "old")
    failed = {r["kernel"] for r in rows if r["error"]}
    assert failed == IDX64_KERNELS, rows
    assert any("eturn type" in r["error"] for r in rows if r["error"]), rows
