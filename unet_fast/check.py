"""Run UNet and the fused up_concat against the reference and print the errors.

A quick self-check for a new install: which path runs here (Triton compiled, Triton interpreted,
or the PyTorch path), and the largest relative error of each against unet_fast.reference.
"""
import torch

from unet_fast import reference
from unet_fast.models.unet import UNet
from unet_fast.ops.up_concat_op import up_concat, uses_triton
from unet_fast.cases import CHECK_STEP


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)


def _path_name(t: torch.Tensor) -> str:
    if not uses_triton(t):
        return "PyTorch path"
    return "Triton kernels (compiled)" if t.is_cuda else "Triton kernels (interpreter)"


def run(args) -> int:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    probe = torch.empty(0, device=device)
    print(f"torch {torch.__version__}, device {device}, up_concat runs: {_path_name(probe)}")
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    if device.type == "cpu" and uses_triton(probe):
        dtypes = [torch.float32, torch.float64]  # keep the interpreter run short
    worst = 0.0
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
        worst = max(worst, max(errs) if dtype in (torch.float32, torch.float64) else 0.0)
        print(f"up_concat {str(dtype):15s} out {errs[0]:.1e}  dx {errs[1]:.1e}  dskip {errs[2]:.1e}  "
              f"dweight {errs[3]:.1e}  dbias {errs[4]:.1e}")
    model = UNet(base_channels=8).to(device)
    ref_model = reference.ReferenceUNet(base_channels=8).to(device)
    ref_model.load_state_dict(model.state_dict(), strict=True)
    image = torch.rand(1, 3, 45, 61, device=device)
    err = reference.relative_error(model(image), ref_model(image))
    worst = max(worst, err)
    print(f"UNet vs ReferenceUNet, float32, input 1x3x45x61: {err:.1e}")
    ok = worst < 1e-4
    print("OK: matches the reference" if ok else f"FAIL: relative error {worst:.1e} over 1e-4")
    return 0 if ok else 1
