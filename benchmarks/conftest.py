"""pytest-benchmark setup for the unet_fast benchmarks.

    pytest benchmarks/ --benchmark-only       time the cases (GPU: the real batch-8 shapes in every
                                              dtype; CPU: a small float32 set, a couple of minutes)
    pytest benchmarks/ --benchmark-disable    run each case once at a tiny size: CI's check that
                                              the benchmarks still run
    --bench-threads 1                         one CPU thread (stable on a shared machine)
    --bench-compile                           include torch.compile providers on the CPU

Unlike tests/conftest.py this file never sets TRITON_INTERPRET: the interpreter is ~1000x slower
than the PyTorch path and is nobody's production path, so on the CPU every benchmark runs with
UNET_FAST_DISABLE_TRITON=1 (the PyTorch path), even when both folders run in one pytest process.
"""
import pytest
import torch

from unet_fast import cases as C

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_addoption(parser):
    parser.addoption("--bench-compile", action="store_true",
                     help="on the CPU, also benchmark the torch.compile providers (slow to compile)")
    parser.addoption("--bench-threads", type=int, default=None,
                     help="torch.set_num_threads for the run (on a shared CPU, 1 gives stable numbers)")


def pytest_configure(config):
    threads = config.getoption("bench_threads", default=None)
    if threads:
        torch.set_num_threads(threads)


def _disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


def bench_cases(config):
    """The cases for this session: tiny when only checking they run, real on a GPU, small on the CPU."""
    if _disabled(config):  # nnU-Net's two shallowest 3-D steps on a 32^3 patch: tiny
        return (C.decoder_cases(batch=1, image_size=32, base_channels=4) + C.nnunet_3d_cases(1, 32)[-2:]
                + [C.ModelCase("unet", 1, 16, 4)])
    if DEVICE.type == "cuda":
        return (C.decoder_cases(batch=8, image_size=512) + C.nnunet_3d_cases(2, 128)
                + [C.ModelCase("unet", 8, 512)])
    # Real channel counts at batch 1 and a quarter of the image area (a 64^3 patch for nnU-Net's
    # 3-D steps): about 80 rows in a few minutes.
    return C.decoder_cases(batch=1, image_size=256) + C.nnunet_3d_cases(1, 64) + [C.ModelCase("unet", 1, 64)]


def bench_dtypes():
    return list(C.BENCH_DTYPES) if DEVICE.type == "cuda" else ["fp32"]


def bench_providers(config):
    from unet_fast.bench import providers as P
    if DEVICE.type == "cpu" and not config.getoption("bench_compile"):
        return [p for p in P.PROVIDERS if p not in P.COMPILED]
    return list(P.PROVIDERS)


def pytest_generate_tests(metafunc):
    if "bench_job" not in metafunc.fixturenames:
        return
    from unet_fast.bench import runner
    config = metafunc.config
    jobs = runner.plan(bench_cases(config), bench_dtypes(), list(C.LAYOUTS), list(C.MODES),
                       bench_providers(config))
    ids = [f"{c.name}-{d}-{lay}-{m}-{p}" for c, d, lay, m, p in jobs]
    metafunc.parametrize("bench_job", jobs, ids=ids)


@pytest.fixture(autouse=True)
def _pytorch_path_on_cpu(monkeypatch):
    if DEVICE.type == "cpu":
        monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "1")


@pytest.fixture
def device():
    return DEVICE
