"""README.md as a newcomer uses it: every Python block runs, every command is one the CLI accepts,
every result file it cites exists, and CI runs README's own install and test lines.

A Python block runs in a fresh interpreter on the CPU, in an empty folder, as a user's CPU runs it
(the op's PyTorch path: TRITON_INTERPRET is not passed on). A block whose first line is
`# needs: NAME ...` runs when NAME is importable (`cuda`: when a GPU is there) and is otherwise
compiled only, and skipped with that reason. A block that reads `runs/demo/best.pt` finds a small
checkpoint there, as `unet-fast demo` would have written it.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
RESULTS_MD = os.path.join(REPO, "benchmarks", "RESULTS.md")
NOTES = os.path.join(REPO, "benchmarks", "NOTES.md")
CI = os.path.join(REPO, ".ci", "run")
# At most 15 KB (15,360 bytes), tables included: what a newcomer reads.
# Depth goes to benchmarks/NOTES.md.
README_MAX_BYTES = 15_360
DEMO_CHECKPOINT = os.path.join("runs", "demo", "best.pt")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def python_blocks():
    return _blocks(_read(README), "python")


def _strip_comment(line):
    """A shell line without its trailing `# ...` comment (shlex honours quotes)."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: not a shell line
        return line.split()


def cli_commands(path):
    """(argv after `unet-fast`, the line) for each command in the file's bash blocks and inline code
    spans: lines starting `unet-fast `, and `-m unet_fast ` after python or torchrun. A quoted
    error line (`unet-fast CMD: error: ...`) is output, not a command."""
    text = _read(path)
    lines = [line.strip() for block in _blocks(text, "bash") for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]+)`", text)
    found = []
    for line in lines:
        if ": error:" in line:
            continue
        words = _strip_comment(line)
        if words[:1] == ["unet-fast"]:
            found.append((words[1:], line))
        elif "-m" in words and words[words.index("-m") + 1:][:1] == ["unet_fast"]:
            found.append((words[words.index("-m") + 2:], line))
    return found


def _need(block):
    first = block.splitlines()[0]
    match = re.match(r"#\s*needs:\s*([\w.]+)", first)
    return match.group(1) if match else None


def _available(need):
    if need == "cuda":
        return torch.cuda.is_available()
    return importlib.util.find_spec(need) is not None


def _write_demo_checkpoint(folder):
    """What `unet-fast demo` leaves in runs/demo/best.pt, at a small size (base_channels 4)."""
    from unet_fast.models.unet import UNet
    from unet_fast.workflow import checkpoint
    from unet_fast.workflow.data import SYNTHETIC_CLASSES

    model = UNet(out_channels=len(SYNTHETIC_CLASSES), base_channels=4)
    path = os.path.join(folder, DEMO_CHECKPOINT)
    os.makedirs(os.path.dirname(path))
    checkpoint.save(path, {"config": checkpoint.model_config(model, list(SYNTHETIC_CLASSES)),
                           "model": model.state_dict(), "epoch": 0, "history": []})


def _user_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread a worker, as tests/conftest.py sets
        env["OMP_NUM_THREADS"] = "1"
    return env


BLOCKS = python_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"python-block-{k}" for k in range(len(BLOCKS))])
def test_python_block_runs_on_the_cpu(block, tmp_path):
    code = compile(block, "README.md block", "exec")  # a SyntaxError fails here, needs or not
    assert code is not None
    need = _need(block)
    if need is not None and not _available(need):
        pytest.skip(f"needs {need}, which is not installed here: compiled only")
    if DEMO_CHECKPOINT.replace(os.sep, "/") in block:
        _write_demo_checkpoint(tmp_path)
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_user_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"README block failed:\n{block}\n--- stderr:\n{proc.stderr[-3000:]}"


def test_readme_has_its_blocks_and_only_known_needs():
    """The intro, the workflow, MONAI, nnU-Net and the op each have a block; a `# needs:` line names
    a module or cuda (a typo there would silently turn a block into compile-only)."""
    assert len(BLOCKS) >= 5
    known = {"cuda", "monai", "dynamic_network_architectures", "nnunetv2"}
    assert {_need(b) for b in BLOCKS} - {None} <= known
    assert sum(_need(b) is None for b in BLOCKS) >= 3  # blocks that always run, here too


BENCHMARKS_README = os.path.join(REPO, "benchmarks", "README.md")
COMMANDS = cli_commands(README) + cli_commands(RESULTS_MD) + cli_commands(BENCHMARKS_README)


@pytest.mark.parametrize("argv,line", COMMANDS, ids=[f"command-{k}" for k in range(len(COMMANDS))])
def test_command_parses_with_the_cli(argv, line):
    from unet_fast import cli

    parser = cli._build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if argv in (["--version"], ["--help"]) and e.code == 0:  # they print and exit at once, as they should
            return
        pytest.fail(f"`{line}` is not a command unet-fast accepts: exit {e.code}")
    except cli.UsageError as e:
        pytest.fail(f"`{line}` is not a command unet-fast accepts: {e}")
    assert args.command in cli.SUBCOMMANDS


def test_commands_are_found():
    """The extraction itself: README names every subcommand a user starts with."""
    named = {argv[0] for argv, _ in cli_commands(README) if argv}
    assert {"demo", "train", "predict", "export", "bench", "networks", "kernels", "check"} <= named


def test_cited_result_files_exist():
    text = _read(README)
    cited = set(re.findall(r"benchmarks/results/[\w.\-]+\.json", text))
    assert cited, "README cites no result file"
    missing = sorted(p for p in cited if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f"README cites result files that do not exist: {missing}"


def test_results_md_is_rendered_from_the_result_files():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import render_results
    finally:
        sys.path.pop(0)
    assert render_results.render(render_results.load()) == _read(RESULTS_MD), \
        "benchmarks/RESULTS.md is out of date: run python benchmarks/render_results.py"


def ci_readme_lines():
    """The command lines under each `# README ...` mark of .ci/run, up to the next blank line."""
    lines, marked = [], False
    for line in _read(CI).splitlines():
        if line.startswith("# README"):
            marked = True
        elif not line.strip():
            marked = False
        elif marked and not line.startswith("#"):
            lines.append(line.split(" || main=")[0])  # CI's status capture is not part of README's line
    return lines


def test_ci_runs_readme_install_and_test_lines():
    readme_lines = {line.strip() for block in _blocks(_read(README), "bash") for line in block.splitlines()}
    ci = ci_readme_lines()
    assert any("pytest" in line for line in ci) and any("pip install" in line for line in ci)
    differing = [line for line in ci if line not in readme_lines]
    assert not differing, f".ci/run's README lines that README.md does not have: {differing}"


def _slug(heading):
    """The anchor a Markdown renderer gives a heading: lower case, punctuation dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_notes_land_on_a_heading():
    anchors = re.findall(r"\(benchmarks/NOTES\.md#([\w\-]+)\)", _read(README))
    assert anchors
    headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(NOTES), re.M)}
    assert set(anchors) <= headings, f"README links to NOTES.md sections that do not exist: {set(anchors) - headings}"


def test_readme_fits_and_speaks_only_of_the_project():
    text = _read(README)
    assert len(text.encode()) <= README_MAX_BYTES, f"README.md is {len(text.encode())} bytes"
    for path in (README, BENCHMARKS_README, RESULTS_MD, NOTES):
        found = re.findall(r"\bsessions?\b|device tool|\blent\b|run\(command", _read(path), re.I)
        assert not found, f"{os.path.relpath(path, REPO)} speaks of {found}"
