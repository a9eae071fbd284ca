"""`unet-fast networks`: whole MONAI / nnU-Net networks, fused against unfused.

The real libraries (the interop extra). Its arguments are refused before a model is built; every
network, mode and provider gives its record (on the meta device: shapes only, in a second); a
small CPU run writes its JSON with the figures and the command that repeats it.
"""
import json
import math

import pytest

pytest.importorskip("monai")
pytest.importorskip("dynamic_network_architectures")

from unet_fast.bench import networks  # noqa: E402
from unet_fast.cli import main  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--size", "32"], "--size must be a multiple of 32 and at least 64, got 32"),
    (["--size", "96", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["--size", "100"], "--size must be a multiple of 32"),
    (["--dtype", "fp64"], "--dtype must be one of fp32, bf16, fp16, got 'fp64'"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--layout", "nhwc"], "unknown layout 'nhwc'"),
    (["--device", "meta"], "expected cpu or cuda"),
    (["--device", "cuda"], "torch sees no GPU"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
])
def test_bad_arguments_are_refused_by_name_before_any_model_is_built(capsys, argv, message, tmp_path):
    assert main(["networks", *argv, "--json", str(tmp_path / "n.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("unet-fast networks: error:"), err
    assert not (tmp_path / "n.json").exists()


def test_every_network_mode_and_provider_gives_a_record_with_its_setting():
    """On the meta device (no arithmetic) at the GPU run's setting: 2 networks x 2 modes x 2
    providers, each decoder step fused (5 in nnU-Net's 3d_fullres, 4 in BasicUNet)."""
    setting = networks.Setting("meta", "bf16", "channels_last", batch=2, size=128)
    records = networks.measure(setting, repeats=1, warmup=0, threads=1, log=lambda text: None)
    assert [(r["network"], r["mode"], r["provider"]) for r in records] == [
        (n, m, p) for n in networks.NETWORKS for m in ("inference", "train_step") for p in networks.PROVIDERS]
    steps = {r["network"]: (r["fused_steps"], r["decoder_steps"]) for r in records}
    assert steps == {"nnunet_3d_fullres": (5, 5), "monai_basicunet_3d": (4, 4)}
    for r in records:
        assert (r["dtype"], r["layout"], r["batch"], r["size"]) == ("bf16", "channels_last", 2, [128] * 3)
        assert r["median_ms"] >= 0 and r.get("peak_memory") is None  # no memory counter on meta


def test_a_cpu_run_writes_its_figures_and_the_command_that_repeats_it(tmp_path, capsys):
    path = tmp_path / "networks.json"
    assert main(["networks", "--device", "cpu", "--network", "monai_basicunet_3d", "--size", "64", "--batch", "1",
                 "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    meta, records = doc["meta"], doc["networks"]
    assert meta["command"] == ("unet-fast networks --device cpu --dtype fp32 --layout contiguous --size 64 "
                               "--batch 1 --network monai_basicunet_3d --repeats 1 --warmup 0 --threads 1")
    assert meta["monai"] and meta["dynamic_network_architectures"] and meta["device"] == "cpu"
    assert len(records) == 4 and all(r["median_ms"] > 0 for r in records)
    inference_fused = records[1]
    # The fused model computes the unfused one's function (the PyTorch path, float32).
    assert inference_fused["relative_error_vs_unfused"] < 1e-5
    peaks = [r["peak_memory"]["step_peak_mib"] for r in records if r["mode"] == "train_step"]
    assert len(peaks) == 2 and all(math.isfinite(p) and p > 0 for p in peaks)
    assert "monai_basicunet_3d" in capsys.readouterr().out


def test_a_missing_library_is_one_line_naming_the_install(monkeypatch, capsys):
    from importlib import metadata

    def version(name):
        if name == "dynamic_network_architectures":
            raise metadata.PackageNotFoundError(name)
        return "1.0"
    monkeypatch.setattr(metadata, "version", version)
    assert main(["networks", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "dynamic_network_architectures is not installed" in err and 'pip install -e ".[interop]"' in err


def test_progress_names_each_network_and_provider_as_it_goes():
    setting = networks.Setting("meta", "fp32", batch=1, size=64)
    lines = []
    networks.measure(setting, repeats=1, warmup=0, threads=1, log=lambda text: None, progress=lines.append)
    for network in networks.NETWORKS:
        mine = [line for line in lines if line.startswith(network + ": ")]
        for provider in networks.PROVIDERS:
            assert any(f"inference {provider}: median" in line for line in mine), mine
            assert any(f"train step {provider}: median" in line for line in mine), mine
    assert lines[0] == "nnunet_3d_fullres: building the unfused and fused models"


def test_the_networks_command_prints_progress_on_stderr(capsys, monkeypatch):
    def measure(setting, *args, progress=None, **kwargs):
        progress("nnunet_3d_fullres: inference fused: median 1.0 ms")
        return []
    monkeypatch.setattr(networks, "measure", measure)
    assert main(["networks", "--device", "cpu", "--network", "monai_basicunet_3d"]) == 0
    assert "unet-fast networks: nnunet_3d_fullres: inference fused: median 1.0 ms" in capsys.readouterr().err
