"""benchmarks/gpu_run.sh and its Triton cache, tested as far as a CPU allows.

- The script's parts and time guard, with a stand-in `nvidia-smi` on PATH: a part that cannot end
  inside the budget is not started, a part that runs writes its log and summary into $OUT, the
  env part prints the Triton cache's identity lines and stops at "no CUDA" on this CPU, a failed
  install stops the run with a non-zero status, and the exit status says whether every part that
  ran passed.
- The cache: the launches recorded by unet_fast.gpu.plan and compiled by
  benchmarks/build_triton_cache.py (under Triton alone, torch blocked) are exactly what Triton's
  JIT then looks up, also after the cache moved to another folder (as it does on the GPU machine)
  and was relocated: compiling the same launches against it compiles nothing new.
Subprocesses throughout: this process interprets the kernels (TRITON_INTERPRET=1, conftest.py).
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


@pytest.fixture
def fake_gpu_path(tmp_path):
    """A PATH whose nvidia-smi answers like a GPU machine's (the script only asks whether one is there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: stand-in for a test'\n")
    smi.chmod(0o755)
    # Then this interpreter's folder: the script calls `python3`, which must be the one with the
    # project installed (an activated venv's), however pytest was started.
    return f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"


def _run_script(out, path, budget, cache=None):
    cache = cache or os.path.join(str(out), "no-cache")
    return subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh")], cwd=REPO,
                          env=_env(OUT=str(out), PATH=path, GPU_RUN_BUDGET_S=str(budget), GPU_RUN_CACHE=cache),
                          capture_output=True, text=True, timeout=600)


def test_script_refuses_a_machine_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh")], cwd=REPO,
                          env=_env(OUT=str(tmp_path), PATH="/usr/bin:/bin"), capture_output=True, text=True)
    assert proc.returncode == 1 and "no GPU here" in proc.stderr and "--dry-run" in proc.stderr


def test_parts_that_cannot_finish_in_the_budget_are_not_started(tmp_path, fake_gpu_path):
    proc = _run_script(tmp_path, fake_gpu_path, budget=1, cache=str(REPO))  # any folder: not "missing"
    assert proc.returncode == 0, proc.stderr  # no part ran, so none failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["env", "tests", "steps", "model", "networks"]
    assert {p["status"] for p in summary["parts"]} <= {"skipped", "not run"}
    assert [p["status"] for p in summary["parts"]][:2] == ["skipped", "skipped"]
    assert "skipped" in (tmp_path / "gpu_run.log").read_text()


def test_the_env_part_prints_the_cache_identity_and_stops_at_no_cuda(tmp_path, fake_gpu_path):
    """Budget for the first part only: it runs (versions, nvidia-smi, the identity of this Triton
    and of the carried cache, then `python3 -m unet_fast check`, which needs CUDA), its log and
    summary land in $OUT, the next part is not started, and the failed part makes the exit 1."""
    proc = _run_script(tmp_path, fake_gpu_path, budget=60)
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    log = (tmp_path / "gpu_run.log").read_text()
    assert parts["env"]["status"] == "exit 1", log[-3000:]
    assert parts["tests"]["status"] == "skipped"
    assert "stand-in for a test" in log and "TRITON_PTXAS_PATH=" in log
    for line in ("triton here: Python", "sha256 of libtriton.so", "sha256 of triton_key()", "triton here: ptxas",
                 "TRITON_* variables", "holds no unet_fast_identity.json", "no CUDA"):
        assert line in log, line
    assert "the carried Triton cache is missing" in log  # the run stops after env and tests
    assert {parts[p]["status"] for p in ("steps", "model", "networks")} == {"not run"}
    assert proc.returncode == 1


def test_a_failed_install_stops_the_run_with_a_non_zero_status(tmp_path, fake_gpu_path):
    """python3 cannot import unet_fast.kernels and pip fails (no registry): one line, exit 1."""
    real = sys.executable
    fake = tmp_path / "bin" / "python3"
    fake.write_text("#!/bin/sh\n"
                    'case "$*" in\n'
                    '  *"import unet_fast.kernels"*) echo "ModuleNotFoundError: unet_fast" >&2; exit 1;;\n'
                    '  *"-m pip"*) echo "ERROR: stand-in pip: no registry" >&2; exit 1;;\n'
                    "esac\n"
                    f'exec "{real}" "$@"\n')
    fake.chmod(0o755)
    proc = _run_script(tmp_path, fake_gpu_path, budget=600)
    log = (tmp_path / "gpu_run.log").read_text()
    assert proc.returncode == 1, log
    assert "the install failed" in proc.stdout and "stand-in pip" in log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "install failed" and summary["parts"] == []


def _bench_calls(part):
    proc = subprocess.run([sys.executable, "-m", "unet_fast.gpu.plan", "bench-calls", part], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.split(maxsplit=2) for line in proc.stdout.splitlines()]


def test_the_bench_calls_are_listed_once_for_the_run_and_the_plan():
    steps = _bench_calls("steps")
    assert [(name, command) for name, command, _ in steps] == [("steps", "bench"), ("steps-fp32", "bench"),
                                                               ("steps-3d", "bench")]
    assert "--provider fused,eager,compiled" in steps[0][2]
    (name, command, arguments), = _bench_calls("networks")
    assert (name, command) == ("networks", "networks")
    assert "--size 128 --batch 2" in arguments and "--dtype bf16 --layout channels_last" in arguments


def test_the_networks_part_installs_the_pinned_wheels_ci_tests():
    """benchmarks/interop_wheels.sh (the wheels the GPU run carries) pins what setup.py's interop
    extra and .ci/run install, and the networks part installs from the carried folder alone."""
    wheels = open(os.path.join(REPO, "benchmarks", "interop_wheels.sh")).read()
    setup = open(os.path.join(REPO, "setup.py")).read()
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert '"monai==1.6.1"' in setup and "monai==1.6.1" in wheels
    assert "dynamic-network-architectures==0.4.4" in ci and "dynamic-network-architectures==0.4.4" in wheels
    script = open(os.path.join(REPO, "benchmarks", "gpu_run.sh")).read()
    assert '--no-deps --no-index "$WHEELS"/*.whl' in script


PLAN_SCRIPT = """
import json, sys
from unet_fast.cases import decoder_cases
from unet_fast.gpu.static_compile import record_specializations
import triton
specs = record_specializations(90, decoder_cases(8)[:1], ["bf16"], ["channels_last"])
json.dump(dict(triton=triton.__version__, capability=90, specializations=specs), open(sys.argv[1], "w"))
"""

JIT_SCRIPT = """
import os, sys
os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
from unet_fast.cases import decoder_cases
from unet_fast.kernels.offline_target import offline_target
from unet_fast.kernels.up_concat_launch import recording_launches
from unet_fast.gpu.static_compile import launch_decoder_step, compile_launch
import torch
with offline_target(90), recording_launches(compile_launch):
    launch_decoder_step(decoder_cases(8)[0], torch.bfloat16, torch.channels_last)
"""


def _cubins(folder):
    """Each compiled kernel in a Triton cache and when it was written: a recompile rewrites it."""
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files if f.endswith(".cubin")}


def test_cache_built_without_torch_is_what_the_jit_looks_up(tmp_path):
    plan, built_here, cache = tmp_path / "plan.json", tmp_path / "built", tmp_path / "moved"
    subprocess.run([sys.executable, "-c", PLAN_SCRIPT, str(plan)], env=_env(), check=True, cwd=REPO)
    kernels = {s["kernel"] for s in json.loads(plan.read_text())["specializations"]}
    assert kernels >= {"up_concat_forward_kernel", "up_concat_backward_input_kernel",
                       "up_concat_backward_weight_kernel"}
    # Triton alone: torch cannot be imported while the cache is built.
    build = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    script = os.path.join(REPO, "benchmarks", "build_triton_cache.py")
    subprocess.run([sys.executable, "-c", build, script, str(plan), str(built_here)], env=_env(), check=True, cwd=REPO)
    os.rename(built_here, cache)
    subprocess.run([sys.executable, script, "--relocate", str(cache)], env=_env(), check=True, cwd=REPO)
    built = _cubins(cache)
    assert len(built) == len(json.loads(plan.read_text())["specializations"])
    subprocess.run([sys.executable, "-c", JIT_SCRIPT, str(cache)], env=_env(), check=True, cwd=REPO)
    assert _cubins(cache) == built, "the JIT compiled kernels the cache should have held"


def test_the_env_part_s_check_holds_each_dtype_to_its_tolerance():
    """On a GPU, float32 runs through TF32 while cudnn.allow_tf32 is on (PyTorch's default): it is
    then held to TF32's tolerance (float16's: the same 10 mantissa bits), else to 1e-5."""
    import torch

    from unet_fast import check, reference
    assert check.tolerance(torch.float32, tf32=True) == reference.TOLERANCES[torch.float16][0]
    assert check.tolerance(torch.float32, tf32=False) == 1e-5
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert check.tolerance(dtype, tf32=True) == reference.TOLERANCES[dtype][0]
    assert not check.tf32_in_use(torch.device("cpu"))
