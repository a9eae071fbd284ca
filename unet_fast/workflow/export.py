"""Export a checkpoint to ONNX (through ReferenceUNet), checked with onnxruntime when installed.

The fused up_concat op is a custom PyTorch op with Triton kernels, which ONNX cannot express;
the checkpoint's weights go into `ReferenceUNet` (same state_dict, plain ConvTranspose2d + cat +
ReLU), which exports with the standard operators. Batch, height and width are dynamic axes.

Uses the TorchScript exporter (dynamo=False), which needs the `onnx` package but not onnxscript
(the dynamo exporter's requirement); the check against PyTorch needs onnxruntime. Both are the
`onnx` extra: pip install 'unet_fast[onnx]'.

  unet-fast export runs/demo/best.pt --onnx unet.onnx
"""
import contextlib
import math
import os
import sys
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from unet_fast.workflow import checkpoint
from unet_fast.workflow.atomic_write import atomic_write, check_output_file, one_line, refuse_to_overwrite
from unet_fast.errors import InputError
from unet_fast.reference import ReferenceUNet

# Any size serves every size (the model always pads and crops, by 0 at multiples of 8); an odd
# one is kept so the check below runs the padding too.
TRACE_SIZE = (45, 61)
CHECK_SHAPES = ((1, 45, 61), (2, 64, 96))
# Largest |onnxruntime - PyTorch| accepted, relative to the logits' scale (float32 rounding
# through a different operator order stays near 1e-6).
TOLERANCE = 1e-4
# Opsets the model exports to: from 11, the first whose Pad takes the input-dependent padding of
# the pad-to-a-multiple-of-8 step, to the newest this torch's exporter writes.
MIN_OPSET = 11
try:
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
except ImportError:  # a private module: if a torch version moves it, the value of torch 2.13
    MAX_OPSET = 23


def check_opset(opset: int) -> None:
    """InputError for an opset the export cannot use, before the exporter runs (it would fail
    only after tracing, with the whole graph printed)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset} is not supported: it must be between {MIN_OPSET} and "
                       f"{MAX_OPSET} (the model's dynamic padding needs {MIN_OPSET}; {MAX_OPSET} is "
                       f"the newest this torch {torch.__version__} exports)")


@contextlib.contextmanager
def _native_output_silenced():
    """File descriptors 1 and 2 sent to /dev/null: when torch's TorchScript exporter fails it
    prints the whole traced graph (a hundred lines) from C++, past Python's sys.stdout; the
    exception it raises says what went wrong, and becomes our one-line error."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # no such descriptors (a daemon): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            for fd in saved:
                os.dup2(null.fileno(), fd)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def export_onnx(model: ReferenceUNet, path, opset: int = 17,
                verify: Optional[Callable[[str], None]] = None) -> None:
    """Write `model` to `path` (atomically) as ONNX with dynamic batch, height and width.

    verify(tmp_path), if given, runs on the finished file before it replaces `path`: if it
    raises, `path` keeps what it held before (a previous good export, or nothing)."""
    model = model.eval()
    example = torch.rand(1, model.in_channels, *TRACE_SIZE)
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(tmp):
        with warnings.catch_warnings(), _native_output_silenced():
            # TracerWarnings about the shape checks and the legacy-exporter notice: expected here.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes})
        if verify is not None:
            verify(tmp)
    atomic_write(path, write)


def check_with_onnxruntime(path, model: ReferenceUNet):
    """Largest |onnxruntime - PyTorch| relative to the logits' scale over CHECK_SHAPES, or None
    if onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. an opset newer than the installed onnxruntime knows
        raise InputError(f"onnxruntime {onnxruntime.__version__} cannot load the exported model: "
                       f"{one_line(e)[:300]}") from e
    errors = []
    generator = torch.Generator().manual_seed(0)
    for n, h, w in CHECK_SHAPES:
        x = torch.rand(n, model.in_channels, h, w, generator=generator)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != want.shape:
            raise InputError(f"ONNX model {path} gives shape {got.shape} for input {tuple(x.shape)}, "
                           f"PyTorch {want.shape}")
        errors.append(float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    # NaN-aware: max(0.0, nan) is 0.0, which would pass an output that is NaN.
    return float("nan") if any(math.isnan(e) for e in errors) else max(errors)


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint from `unet-fast train` or `demo`")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17,
                        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default %(default)s)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")


def run(args) -> int:
    check_opset(args.opset)
    ckpt = checkpoint.read(args.checkpoint)
    model = checkpoint.build_model(ckpt, args.checkpoint, model_class=ReferenceUNet).eval()
    try:
        import onnx  # noqa: F401  (torch.onnx.export serialises through it)
    except ImportError:
        raise InputError("ONNX export needs the onnx package: pip install 'unet_fast[onnx]'") from None
    check_output_file(args.onnx)
    if not args.overwrite:
        refuse_to_overwrite([args.onnx], "pass --overwrite to replace it")
    shapes = ", ".join("x".join(map(str, (n, model.in_channels, h, w))) for n, h, w in CHECK_SHAPES)
    checked = {}

    def verify(tmp):
        checked["error"] = err = check_with_onnxruntime(tmp, model)
        if err is not None and not err <= TOLERANCE:  # NaN fails too
            raise InputError(f"onnxruntime output differs from PyTorch by {err:.1e} (relative) on "
                           f"{shapes}; {args.onnx} not written")

    try:
        export_onnx(model, args.onnx, args.opset, verify=None if args.no_check else verify)
    except InputError:
        raise
    except Exception as e:  # an exporter failure: nothing was written (atomic_write cleaned up)
        raise InputError(f"ONNX export of {args.checkpoint} failed: {one_line(e)[:300]}") from e
    print(f"wrote {args.onnx} (opset {args.opset}; input 'image' float32 [N, {model.in_channels}, H, W] "
          f"in [0, 1], output 'logits' [N, {model.out_channels}, H, W]; classes: "
          f"{', '.join(model.class_names)})")
    if args.no_check:
        return 0
    if checked["error"] is None:
        print("onnxruntime is not installed: output not checked (pip install 'unet_fast[onnx]')")
    else:
        print(f"onnxruntime check passed: largest difference {checked['error']:.1e} (relative) "
              f"on inputs {shapes}")
    return 0
