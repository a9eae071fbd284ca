"""The benchmark harness runs, writes complete JSON rows and a plot. Speed is never asserted here:
timings on shared CI machines mean nothing, and the harness's job is to report them."""
import json

import pytest
import torch

from unet_fast import cases as C
from unet_fast.kernels import byte_model
from unet_fast.cli import main

ROW_FIELDS = {"device", "device_name", "torch", "triton", "commit", "date", "case", "case_label",
              "shapes", "dtype", "layout", "mode", "provider", "impl", "status", "note", "median_ms",
              "q20_ms", "q80_ms", "min_ms", "speedup_vs_eager", "bytes", "gbps", "pct_of_floor", "peak_mb",
              "rel_err"}


@pytest.fixture
def pytorch_path(monkeypatch):
    # The harness itself forces the PyTorch path on the CPU; this makes sure nothing in the
    # test runs Triton's interpreter at benchmark sizes either.
    monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "1")


def test_quick_run_writes_json_and_plot(tmp_path, pytorch_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "speedup.png"
    threads = torch.get_num_threads()
    rc = main(["bench", "--quick", "--device", "cpu", "--case", "up1,unet,custom",
               "--shape", "1,8,4,4,3,5", "--image-size", "16", "--base-channels", "4",
               "--model-size", "16", "--provider", "all", "--warmup", "0", "--repeats", "1",
               "--no-progress", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    meta = doc["meta"]
    assert meta["device"] == "cpu" and meta["fused_path"] == "PyTorch path"
    assert meta["torch"] == torch.__version__ and meta["commit"] and meta["date"]
    assert meta["measured_copy_gbps"] > 0 and meta["ceiling_gbps"] > 0

    rows = doc["rows"]
    assert {r["case"] for r in rows} == {"up1", "custom", "unet"}
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["mode"] == "full" and r["dtype"] == "fp32"
        if r["provider"] in ("compiled", "fused-compiled"):
            # opt-in on the CPU: present in the table, with a note that says why it is empty
            assert r["status"] == "skipped" and "--compile" in r["note"] and r["median_ms"] is None
            continue
        assert r["status"] == "ok", r["note"]
        assert r["median_ms"] > 0 and r["peak_mb"] is None  # no peak-memory counter on the CPU
        assert r["rel_err"] < 1e-5
        assert r["speedup_vs_eager"] > 0
        if r["provider"] == "eager":
            assert r["speedup_vs_eager"] == pytest.approx(1.0)
        if r["kind"] == "step":
            assert r["gbps"] > 0 and r["pct_of_floor"] > 0
        else:
            assert r["bytes"] is None and r["gbps"] is None

    custom = next(r for r in rows if r["case"] == "custom")
    assert custom["shapes"]["x"] == [1, 8, 3, 5] and custom["shapes"]["skip"] == [1, 4, 6, 10]
    assert custom["bytes"] == round(sum(byte_model.step_floor(C.StepCase("custom", 1, 8, 4, 4, (3, 5)), d, 4)
                                        for d in ("forward", "backward")))
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.get_num_threads() == threads  # the harness may pick fewer; it restores them


def test_forward_bytes_of_the_default_unet_steps():
    # bf16, batch 8, the default UNet at 512x512: 235.9, 470.0, 939.6 MB forward, worked out by hand:
    # x, out's upsampled channels, skip read and written, the weight.
    steps = C.decoder_cases(batch=8, image_size=512)
    mb = [round(c.nbytes("forward", torch.bfloat16) / 1e6, 1) for c in steps]
    assert mb == [235.9, 470.0, 939.6]
    assert [c.shapes()["x"] for c in steps] == [[8, 512, 64, 64], [8, 256, 128, 128], [8, 128, 256, 256]]


@pytest.mark.parametrize("relu", [True, False])
def test_backward_bytes_count_each_tensor_once(relu):
    """float32, x [2, 16, 3, 5] -> 8 + 4 channels at [6, 10], bias."""
    n, cin, cout, cs, h, w = 2, 16, 8, 4, 3, 5
    pixels = n * h * w
    case = C.StepCase("custom", n, cin, cout, cs, (h, w), relu=relu)
    if relu:
        expected = (4 * 4 * pixels * (cout + cs)      # grad
                    + 4 * pixels * (cout + cs) // 8    # the ReLU mask, one bit per output element
                    + 4 * 4 * pixels * cs)             # dskip written
    else:
        expected = 4 * 4 * pixels * cout               # grad's upsampled channels (dskip: a view of grad)
    expected += (4 * 2 * pixels * cin                  # x read, dx written
                 + 4 * 2 * 4 * cin * cout              # weight read, dweight written
                 + 4 * cout)                           # dbias
    assert case.nbytes("backward", torch.float32) == expected


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "float8"], "--dtype: unknown 'float8'"),
    (["--case", "custom"], "needs at least one --shape"),
    (["--shape", "1,2,3"], "six or seven positive integers"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--json", "/nonexistent-folder/bench.json"], "does not exist"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, pytorch_path):
    assert main(["bench", "--quick", "--device", "cpu", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cpu_providers_are_timed_in_turns():
    """On the CPU the providers of one row group alternate call by call, so a slow phase of a
    shared machine falls on all of them alike; each gets its own statistics."""
    from unet_fast.bench.timing import time_interleaved_cpu

    calls = []
    stats = time_interleaved_cpu([lambda: calls.append("a"), lambda: calls.append("b")],
                                 warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4
    assert len(stats) == 2 and all(s["median_ms"] >= s["min_ms"] >= 0 for s in stats)
    assert "in turns" in stats[0]["timer"]


def test_nnunet_3d_cases_are_its_default_3d_fullres_decoder():
    steps = C.nnunet_3d_cases(batch=2, patch=128)
    assert [(c.cin, c.cout, c.spatial, c.kernel) for c in steps] == [
        (320, 320, (4, 4, 4), (2, 2, 2)), (320, 256, (8, 8, 8), (2, 2, 2)), (256, 128, (16, 16, 16), (2, 2, 2)),
        (128, 64, (32, 32, 32), (2, 2, 2)), (64, 32, (64, 64, 64), (2, 2, 2)), (64, 32, (16, 64, 64), (1, 2, 2))]
    assert all(c.cs == c.cout and not c.relu and not c.skip_first for c in steps)
    # Compulsory bytes of the 64 -> 32 step, bf16: x read once, skip read once, out written once.
    c = steps[4]
    p, t = 2 * 64**3, 8
    assert c.nbytes("forward", torch.bfloat16) == 2 * (p * 64 + p * t * (32 + 2 * 32) + t * 64 * 32)


def test_3d_step_rows_run_and_match_the_reference(tmp_path, pytorch_path):
    out_json = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--device", "cpu", "--case", "3da,3d1", "--patch-size", "32", "--provider",
               "fused,eager", "--warmup", "0", "--repeats", "1", "--no-progress", "--json", str(out_json)])
    assert rc == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["case"] for r in rows} == {"3da", "3d1"}
    for r in rows:
        assert r["status"] == "ok" and r["rel_err"] < 1e-5, r
        assert len(r["shapes"]["x"]) == 5


TINY_QUICK = ["bench", "--quick", "--device", "cpu", "--case", "custom", "--shape", "1,4,2,2,3,3",
              "--provider", "fused,eager", "--layout", "contiguous", "--warmup", "0", "--repeats", "1",
              "--sets", "1"]


def test_a_cpu_run_says_which_path_ran_and_that_its_figures_are_not_the_gpu_figures(capsys, pytorch_path):
    assert main([*TINY_QUICK, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "the fused op runs: PyTorch path" in err
    assert "not the product's GPU figures" in err
    assert "not the product's GPU figures" in out  # the table's header says it too


def test_progress_into_a_pipe_or_log_is_plain_lines_without_redraws(capsys, monkeypatch, pytorch_path):
    """stderr here is not a terminal (pytest captures it): no bar redraws, but a plain line
    (each of them, with LINE_SECONDS 0)."""
    from unet_fast.workflow import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    assert main([*TINY_QUICK, "--shape", "1,4,2,2,5,5"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert "bench: 2/4 row (custom fp32 contiguous full fused,eager)" in err
    assert "bench: 4/4 row (custom2 fp32 contiguous full fused,eager)" in err


def test_plain_progress_lines_are_occasional(capsys, monkeypatch):
    from unet_fast.workflow import progress

    clock = iter([0.0, 1.0, 31.0, 32.0, 62.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    assert list(progress.progress(range(4), desc="epoch 1/1", unit="batch")) == [0, 1, 2, 3]
    assert capsys.readouterr().err.splitlines() == ["epoch 1/1: 2/4 batch", "epoch 1/1: 4/4 batch"]
