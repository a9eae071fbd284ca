"""benchmarks/gpu_run.sh and its Triton cache, tested as far as a CPU allows.

- The script's parts and time guard, with a stand-in `nvidia-smi` on PATH: a part that cannot end
  inside the budget is not started, a part that runs writes its log and summary into $OUT.
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
    return f"{bin_dir}:{os.environ['PATH']}"


def _run_script(out, path, budget):
    return subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh")], cwd=REPO,
                          env=_env(OUT=str(out), PATH=path, GPU_RUN_BUDGET_S=str(budget)),
                          capture_output=True, text=True, timeout=600)


def test_script_refuses_a_machine_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh")], cwd=REPO,
                          env=_env(OUT=str(tmp_path), PATH="/usr/bin:/bin"), capture_output=True, text=True)
    assert proc.returncode == 1 and "no GPU here" in proc.stderr and "--dry-run" in proc.stderr


def test_parts_that_cannot_finish_in_the_budget_are_not_started(tmp_path, fake_gpu_path):
    proc = _run_script(tmp_path, fake_gpu_path, budget=1)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["env", "tests", "steps", "model", "compiled"]
    assert {p["status"] for p in summary["parts"]} == {"skipped"}
    assert "skipped" in (tmp_path / "gpu_run.log").read_text()


def test_a_part_that_fits_runs_and_reports_as_it_ends(tmp_path, fake_gpu_path):
    """Budget for the first part only: it runs (versions, nvidia-smi, unet-fast check on this
    CPU), its log and summary land in $OUT, and the next part is not started."""
    proc = _run_script(tmp_path, fake_gpu_path, budget=60)
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert parts["env"]["status"] == "exit 0", (tmp_path / "gpu_run.log").read_text()[-3000:]
    assert parts["tests"]["status"] == "skipped"
    log = (tmp_path / "gpu_run.log").read_text()
    assert "stand-in for a test" in log and "OK: matches the reference" in log
    assert proc.returncode == 0


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
    assert kernels == {"up_concat_forward_kernel", "up_concat_backward_input_kernel",
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
