"""`bench --json/--plot`, `networks --json` and `kernels --json`: checked before any measuring or
compiling, written atomically like every other output (a link to a regular file is replaced, not
written through), while a FIFO, a character device (/dev/null) or one of the process's own
descriptors (/dev/stdout, /proc/self/fd/1), or a link to one, is written through and never
replaced; two options naming one file are refused. `bench`'s numbers are checked like train's
and predict's. `check --device` takes train's device checks, and a command whose reader goes
away exits quietly."""
import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from unet_fast.bench import networks, runner
from unet_fast.cli import main
from unet_fast.workflow.atomic_write import atomic_write_text
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
    (lambda t: f"{t / 'out.json'}/", "--json", "ends with a slash"),
    (lambda t: f"{t / 'results'}/", "--json", "ends with a slash"),
    (lambda t: t / "socket", "--json", "neither a regular file nor a FIFO"),
], ids=["json-folder", "json-missing-parent", "plot-extension", "plot-folder", "json-slash", "json-folder-slash",
        "json-socket"])
def test_bench_output_files_are_checked_before_measuring(tmp_path, capsys, no_measuring, make, option,
                                                         message):
    (tmp_path / "results").mkdir()
    with _socket(tmp_path / "socket"):
        assert_cli_error(capsys, *QUICK, option, make(tmp_path), contains=[option, message])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


class _socket:
    """A listening Unix socket at `path` for the duration of a `with`."""

    def __init__(self, path):
        import socket
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self.sock.close()
        os.unlink(self.path)


@pytest.mark.parametrize("spelling", [
    lambda t: (t / "out.svg", t / "out.svg"),
    lambda t: (t / "out.svg", t / "sub" / ".." / "out.svg"),
    lambda t: (t / "link.svg", t / "out.svg"),
], ids=["same", "dot-dot", "link"])
def test_bench_refuses_one_file_for_json_and_plot(tmp_path, capsys, no_measuring, spelling):
    (tmp_path / "sub").mkdir()
    (tmp_path / "out.svg").write_text("earlier")
    (tmp_path / "link.svg").symlink_to(tmp_path / "out.svg")
    first, second = spelling(tmp_path)
    assert_cli_error(capsys, *QUICK, "--json", first, "--plot", second,
                     contains=["--json", "--plot", "are the same file"])
    assert (tmp_path / "out.svg").read_text() == "earlier"


def _fifo_reader(path):
    """A FIFO at `path` and a thread reading everything written to it: (thread, received bytes)."""
    os.mkfifo(path)
    received = []

    def read():
        with open(path, "rb") as f:
            received.append(f.read())
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


def test_bench_writes_through_a_fifo_and_a_link_to_a_character_device(tmp_path, capsys):
    fifo = tmp_path / "rows.fifo"
    thread, received = _fifo_reader(fifo)
    null = tmp_path / "null.png"
    null.symlink_to(os.devnull)
    assert main([*QUICK, "--json", str(fifo), "--plot", str(null)]) == 0, capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # first: a replaced FIFO never ends its reader
    thread.join()
    assert json.loads(received[0])["rows"]
    assert null.is_symlink() and os.readlink(null) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.png", "rows.fifo"]  # no temporaries


def test_a_write_through_a_descriptor_keeps_the_file_it_is_open_on(tmp_path):
    """/proc/self/fd/N of a regular file (`--json /dev/stdout` when stdout goes to a log): the
    bytes go at the descriptor's own position, after what it wrote before, and the file stays."""
    log = tmp_path / "log.txt"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"table\n")
        inode = os.stat(log).st_ino
        atomic_write_text(f"/proc/self/fd/{fd}", "{}\n")
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_text() == "table\n{}\nafter\n"
    assert os.stat(log).st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]


def test_bench_json_through_a_link_to_its_own_stdout(tmp_path):
    link = tmp_path / "stdout.json"
    link.symlink_to("/proc/self/fd/1")
    done = subprocess.run([sys.executable, "-m", "unet_fast", *QUICK, "--json", str(link)], env=cli_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table, _, rest = done.stdout.partition("\n{")
    assert "fused" in table and json.loads("{" + rest)["rows"]
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


def test_networks_and_kernels_write_json_through_a_fifo(tmp_path, capsys, monkeypatch):
    from unet_fast.gpu import static_compile

    monkeypatch.setattr(static_compile, "compile_report", lambda *args, **kwargs: [])
    monkeypatch.setattr(networks, "measure", lambda *args, **kwargs: [])
    for command in (["kernels"], ["networks", "--device", "cpu", "--network", "monai_basicunet_3d"]):
        fifo = tmp_path / "out.fifo"
        thread, received = _fifo_reader(fifo)
        assert main([*command, "--json", str(fifo)]) in (0, 1), capsys.readouterr().err
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        thread.join()
        assert isinstance(json.loads(received[0]), dict)
        fifo.unlink()
    capsys.readouterr()


@pytest.mark.parametrize("command", [["kernels"], ["networks", "--device", "cpu"]])
def test_networks_and_kernels_check_json_first(tmp_path, capsys, monkeypatch, command):
    from unet_fast.gpu import static_compile

    def measured(*args, **kwargs):
        raise AssertionError("the run started before the bad --json was reported")
    monkeypatch.setattr(static_compile, "compile_report", measured)
    monkeypatch.setattr(networks, "measure", measured)
    assert_cli_error(capsys, *command, "--json", f"{tmp_path / 'out.json'}/", contains=["ends with a slash"])
    assert_cli_error(capsys, *command, "--json", tmp_path / "no" / "out.json", contains=["does not exist"])
    assert list(tmp_path.iterdir()) == []


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
