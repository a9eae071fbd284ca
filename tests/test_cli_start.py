"""The command line before any work: argparse's errors and every other one are one line
`unet-fast CMD: error: ...` with exit code 2; the environment variables a command reads are
checked when it starts (naming the variable, nothing made); --version; help on every option."""
import argparse

import pytest

import unet_fast
from unet_fast import cli
from unet_fast.bench import networks
from unet_fast.errors import InputError
from unet_fast.workflow import data
from workflow_fixtures import assert_cli_error, pytorch_path, run_cli  # noqa: F401

TRAIN = ["train", "--samples", "8", "--image-size", "16", "--base-channels", "4", "--batch-size", "4",
         "--epochs", "1", "--no-progress"]


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if `networks` or `kernels` gets as far as measuring or compiling."""
    from unet_fast.gpu import static_compile

    def measured(*args, **kwargs):
        raise AssertionError("the work started before the bad input was reported")
    monkeypatch.setattr(networks, "measure", measured)
    monkeypatch.setattr(static_compile, "compile_report", measured)


# ---- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["networks", "--threads", "-1"], "argument --threads: expected a whole number >= 1, got '-1'"),
    (["networks", "--threads", "0"], "argument --threads: expected a whole number >= 1, got '0'"),
    (["networks", "--threads", "two"], "argument --threads: expected a whole number >= 1, got 'two'"),
    (["kernels", "--max-spill", "-1"], "argument --max-spill: expected a whole number >= 0, got '-1'"),
    (["kernels", "--kernel", "forward,backward"], "--kernel: unknown 'backward'; choose from forward, backward_input"),
    (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["networks", "--network", "unet"], "argument --network: invalid choice: 'unet'"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_argument_errors_are_one_line(capsys, no_measuring, argv, message):
    assert_cli_error(capsys, *argv, contains=[message])


def test_a_missing_command_is_one_line(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2 and err.strip() == "unet-fast: error: the following arguments are required: COMMAND"


def test_the_internal_memory_child_option_is_refused_to_users(capsys, no_measuring, monkeypatch):
    monkeypatch.delenv(networks.MEMORY_CHILD_MARKER, raising=False)
    for names in (["nnunet_3d_fullres", "fused"], ["x", "y"]):
        assert_cli_error(capsys, "networks", "--memory-child", *names, contains=["--memory-child is internal"])
    monkeypatch.setenv(networks.MEMORY_CHILD_MARKER, "1")  # as the parent starts it: the names are checked
    assert_cli_error(capsys, "networks", "--memory-child", "x", "y", contains=["got 'x' 'y'"])


def test_networks_refuses_a_size_no_memory_holds_before_building_a_model(capsys, no_measuring, monkeypatch,
                                                                         tmp_path):
    def built(*args, **kwargs):
        raise AssertionError("a model was built on the device")
    monkeypatch.setattr(networks, "twins", built)
    assert_cli_error(capsys, "networks", "--device", "cpu", "--size", "1024", "--batch", "8",
                     "--json", tmp_path / "n.json",
                     contains=["a training step of nnunet_3d_fullres on 8 patch(es) of 1024^3",
                               "needs at least", "GiB cpu has", "lower --size or --batch"])
    assert list(tmp_path.iterdir()) == []


def test_the_networks_memory_bound_grows_with_the_input_and_halves_with_16_bit():
    """The traced bound: activations linear in the batch and 8x for 8x the voxels, the weights
    a constant; bf16 halves everything."""
    def bound(dtype="fp32", batch=1, size=64):
        return networks.training_bytes("monai_basicunet_3d", networks.Setting("cpu", dtype, batch=batch, size=size))
    one = bound()
    activations = bound(batch=2) - one
    assert bound(size=128) - one == 7 * activations
    assert bound("bf16") * 2 == one
    # At least the input-sized outputs of BasicUNet's first block (two 32-channel convolutions,
    # each followed by a normalisation) in float32.
    assert activations > 4 * 32 * 64**3 * 4


# ---- environment variables ---------------------------------------------------------------------

def test_a_bad_disable_triton_value_stops_train_before_its_output_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "maybe")
    out = tmp_path / "run"
    assert_cli_error(capsys, *TRAIN, "--out", out, contains=["UNET_FAST_DISABLE_TRITON='maybe'", "expected one of"])
    assert not out.exists()
    assert_cli_error(capsys, "networks", "--threads", "1", contains=["UNET_FAST_DISABLE_TRITON='maybe'"])
    from unet_fast.workflow.train import fit
    from workflow_fixtures import tiny_options
    with pytest.raises(InputError, match="UNET_FAST_DISABLE_TRITON"):  # the Python API too
        fit(tiny_options(out))
    assert not out.exists()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be a whole number >= 1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be a whole number >= 1"),
    ({"WORLD_SIZE": "1.5"}, "WORLD_SIZE='1.5' must be a whole number >= 1"),
    ({"RANK": "-1"}, "RANK='-1' must be a whole number >= 0"),
    ({"RANK": "\u0661"}, "RANK='\u0661' must be a whole number >= 0"),  # an Arabic-Indic 1
    ({"LOCAL_RANK": "gpu0"}, "LOCAL_RANK='gpu0' must be a whole number >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT are not set: launch with torchrun"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost"}, "MASTER_PORT is not set: launch with torchrun"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "http"}, "MASTER_PORT='http' must be"),
])
def test_torchruns_variables_are_checked_at_start_naming_the_variable(capsys, monkeypatch, tmp_path, env,
                                                                      message):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert_cli_error(capsys, *TRAIN, "--out", out, contains=[message])
    assert not out.exists()


@pytest.mark.parametrize("value", ["\u0661\u0660\u0660", "\u00b2", "1e6", "-5", "0"])
def test_a_bad_pixel_limit_names_the_variable_not_the_image(capsys, monkeypatch, tmp_path, value):
    monkeypatch.setenv(data.PIXEL_LIMIT_VARIABLE, value)
    out = tmp_path / "masks"
    assert_cli_error(capsys, "predict", tmp_path / "model.pt", tmp_path / "image.png", "--out", out,
                     contains=["UNET_FAST_MAX_IMAGE_PIXELS must be a positive whole number", repr(value)])
    assert not out.exists()
    with pytest.raises(InputError, match="UNET_FAST_MAX_IMAGE_PIXELS"):
        data.pixel_limit()


# ---- --version and help ------------------------------------------------------------------------

def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"unet-fast {unet_fast.__version__}"


def test_every_option_of_every_command_has_help():
    parser = cli._build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == set(cli.SUBCOMMANDS)
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, command in [("unet-fast", parser), *commands.items()]
               for action in command._actions
               if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert missing == [], f"options without help: {missing}"
