"""Run UNet and the fused up_concat against the reference and print the errors.

A quick self-check for a new install: which path runs here (Triton compiled, Triton interpreted,
or the PyTorch path), and the largest relative error of each against unet_fast.reference, each
row held to its own dtype's tolerance. On CUDA with torch.backends.cudnn.allow_tf32 on (PyTorch's
default) float32 convolutions and the fused kernels multiply in TF32, which keeps float16's 10
mantissa bits: float32 is then held to float16's tolerance, and the output says so.
"""
import torch

from unet_fast import reference
from unet_fast.cases import CHECK_STEP
from unet_fast.errors import InputError
from unet_fast.workflow.distributed import resolve_device
from unet_fast.models.unet import UNet
from unet_fast.ops.up_concat_op import up_concat, uses_triton

# TF32 rounds a float32 operand to 10 mantissa bits, as float16 does: the same relative error.
TF32_TOLERANCE = reference.TOLERANCES[torch.float16][0]


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def _interpreting() -> bool:
    try:
        from unet_fast.kernels.common import interpreting
    except ImportError:
        return False
    return interpreting()


def _path_name(t: torch.Tensor) -> str:
    if not uses_triton(t):
        return "PyTorch path"
    if t.is_cuda:
        return "Triton kernels (compiled)"
    # Not interpreting: the GPU plan's record mode (unet_fast/gpu/record.py) records the launches.
    return "Triton kernels (interpreter)" if _interpreting() else "Triton kernels (launches recorded, not run)"


def tf32_in_use(device: torch.device) -> bool:
    """Whether float32 convolutions and the fused kernels multiply in TF32 on `device`."""
    return device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32)


def tolerance(dtype: torch.dtype, tf32: bool) -> float:
    """The relative error a row of dtype `dtype` may show (reference.TOLERANCES' rtol)."""
    if dtype == torch.float32 and tf32:
        return TF32_TOLERANCE
    return reference.TOLERANCES[dtype][0]


def _interpreter_problem():
    try:
        from unet_fast.kernels.common import interpreter_problem
    except ImportError:
        return None
    return interpreter_problem() if _interpreting() else None


def run(args) -> int:
    if not 0 <= args.seed < 2**63:  # torch.manual_seed's range, as one line, not its OverflowError
        raise InputError(f"--seed must be an integer from 0 to {2**63 - 1}, got {args.seed}")
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)  # train's checks: unknown, meta, absent GPU: one line
    if device.type == "cpu":
        problem = _interpreter_problem()
        if problem:  # one line, not the traceback of the first kernel
            raise InputError(problem)
    probe = torch.empty(0, device=device)
    tf32 = tf32_in_use(device)
    print(f"torch {torch.__version__}, device {device}, up_concat runs: {_path_name(probe)}")
    print("float32 held to TF32's tolerance {:.2g} (torch.backends.cudnn.allow_tf32 is on)".format(TF32_TOLERANCE)
          if tf32 else "float32 held to {:.2g} (no TF32{})".format(
              reference.TOLERANCES[torch.float32][0],
              ": torch.backends.cudnn.allow_tf32 is off" if device.type == "cuda" else " on this device"))
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    if _path_name(probe) == "Triton kernels (interpreter)":
        dtypes = [torch.float32, torch.float64]  # keep the interpreter run short
    failed = []
    for dtype in dtypes:
        c = CHECK_STEP
        x = torch.randn(c.n, c.cin, c.h, c.w, device=device, dtype=dtype, requires_grad=True)
        skip = torch.randn(c.n, c.cs, 2 * c.h, 2 * c.w, device=device, dtype=dtype, requires_grad=True)
        up = torch.nn.ConvTranspose2d(c.cin, c.cout, 2, 2).to(device, dtype)
        out = up_concat(x, skip, up.weight, up.bias)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, skip, up.weight, up.bias), grad)
        leaves = [t.detach().double().requires_grad_() for t in (x, skip, up.weight, up.bias)]
        ref = reference.up_concat(*leaves)
        want = torch.autograd.grad(ref, leaves, grad.double())
        errs = [reference.relative_error(a, e) for a, e in zip((out, *got), (ref, *want))]
        tol = tolerance(dtype, tf32)
        ok = max(errs) <= tol
        if not ok:
            failed.append(f"up_concat {dtype} {max(errs):.1e} over {tol:.2g}")
        print(f"up_concat {str(dtype):15s} out {errs[0]:.1e}  dx {errs[1]:.1e}  dskip {errs[2]:.1e}  "
              f"dweight {errs[3]:.1e}  dbias {errs[4]:.1e}  (tolerance {tol:.2g}: {'ok' if ok else 'FAIL'})")
    model = UNet(base_channels=8).to(device)
    ref_model = reference.ReferenceUNet(base_channels=8).to(device)
    ref_model.load_state_dict(model.state_dict(), strict=True)
    image = torch.rand(1, 3, 45, 61, device=device)
    with torch.no_grad():
        expected = ref_model.double()(image.double())
    err = reference.relative_error(model(image), expected)
    tol = tolerance(torch.float32, tf32)
    if err > tol:
        failed.append(f"UNet float32 {err:.1e} over {tol:.2g}")
    print(f"UNet vs ReferenceUNet (float64), float32, input 1x3x45x61: {err:.1e}  "
          f"(tolerance {tol:.2g}: {'ok' if err <= tol else 'FAIL'})")
    print("OK: every row within its tolerance" if not failed else "FAIL: " + "; ".join(failed))
    return 0 if not failed else 1
