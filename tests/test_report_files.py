"""`bench --json/--plot` and `kernels --json`: checked before any measuring or compiling, written
atomically like every other output (a link is replaced, not written through), and `bench`'s
numbers checked like train's and predict's. `check --device` takes train's device checks, and a
command whose reader goes away exits quietly."""
import json
import subprocess
import sys

import pytest

from unet_fast.bench import runner
from unet_fast.cli import main
from workflow_fixtures import assert_cli_error, cli_env, pytorch_path  # noqa: F401

QUICK = ["bench", "--quick", "--device", "cpu", "--case", "custom", "--shape", "1,4,2,2,3,3",
         "--provider", "fused,eager", "--layout", "contiguous", "--warmup", "0", "--repeats", "1",
         "--sets", "1", "--no-progress"]


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if the benchmark gets as far as measuring."""
    def measured(*args, **kwargs):
        raise AssertionError("the run started before the bad option was reported")
    monkeypatch.setattr(runner, "run_all", measured)


@pytest.mark.parametrize("make, option, message", [
    (lambda t: t / "results", "--json", "is a folder"),
    (lambda t: t / "missing" / "bench.json", "--json", "does not exist"),
    (lambda t: t / "speedup.xyz", "--plot", "cannot draw a .xyz"),
    (lambda t: t / "results", "--plot", "is a folder"),
], ids=["json-folder", "json-missing-parent", "plot-extension", "plot-folder"])
def test_bench_output_files_are_checked_before_measuring(tmp_path, capsys, no_measuring, make, option,
                                                         message):
    (tmp_path / "results").mkdir()
    assert_cli_error(capsys, *QUICK, option, make(tmp_path), contains=[option, message])


@pytest.mark.parametrize("option, value, message", [
    ("--warmup", "-5", "--warmup must be >= 0, got -5"),
    ("--bandwidth", "-5", "--bandwidth must be a positive number of GB/s, got -5.0"),
    ("--bandwidth", "nan", "got nan"),
    ("--bandwidth", "0", "got 0.0"),
])
def test_bench_numbers_are_checked(capsys, no_measuring, option, value, message):
    assert_cli_error(capsys, *QUICK, option, value, contains=[message])


def test_bench_json_and_plot_replace_a_link_instead_of_writing_through_it(tmp_path, capsys):
    targets = {name: tmp_path / f"elsewhere_{name}" for name in ("json", "png")}
    links = {name: tmp_path / f"out.{name}" for name in ("json", "png")}
    for name in targets:
        targets[name].write_text("someone else's file")
        links[name].symlink_to(targets[name])
    assert main([*QUICK, "--json", str(links["json"]), "--plot", str(links["png"])]) == 0
    capsys.readouterr()
    for name in targets:
        assert targets[name].read_text() == "someone else's file"
        assert not links[name].is_symlink()
    assert json.loads(links["json"].read_text())["rows"]
    assert links["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in targets.values()] + [p.name for p in links.values()])  # no temporaries


def test_kernels_json_is_checked_first_and_replaces_a_link(tmp_path, capsys, monkeypatch):
    from unet_fast.gpu import static_compile

    def compiled(*args, **kwargs):
        raise AssertionError("compiled before the bad --json was reported")
    monkeypatch.setattr(static_compile, "compile_report", compiled)
    (tmp_path / "results").mkdir()
    assert_cli_error(capsys, "kernels", "--json", tmp_path / "results", contains=["--json", "is a folder"])
    assert_cli_error(capsys, "kernels", "--json", tmp_path / "no" / "k.json", contains=["does not exist"])

    monkeypatch.setattr(static_compile, "compile_report", lambda *args, **kwargs: [])
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    link = tmp_path / "k.json"
    link.symlink_to(target)
    main(["kernels", "--json", str(link)])
    capsys.readouterr()
    assert target.read_text() == "keep"
    assert not link.is_symlink() and json.loads(link.read_text())["rows"] == []


@pytest.mark.parametrize("device, message", [
    ("foo", "unknown device 'foo'"),
    ("meta", "holds no data"),
    ("cuda:7", "cuda:7 requested but"),
])
def test_check_takes_trains_device_checks(capsys, device, message):
    assert_cli_error(capsys, "check", "--device", device, contains=[message])


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_check_refuses_a_seed_out_of_range(capsys, seed):
    assert_cli_error(capsys, "check", "--device", "cpu", "--seed", seed, contains=["--seed must be", seed])


def test_check_into_a_closed_pipe_exits_quietly():
    done = subprocess.run(f"{sys.executable} -m unet_fast check --device cpu | head -c 0", shell=True,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.stderr == "", done.stderr
