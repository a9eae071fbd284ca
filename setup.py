"""unet_fast: a drop-in U-Net whose decoder steps are fused Triton kernels.

The repository's top-level ``kernels/`` folder is installed as ``unet_fast.kernels``
(PyPI has an unrelated top-level ``kernels`` package, imported by transformers).
"""
from setuptools import setup

setup(
    name="unet_fast",
    version="0.1.0",
    description="U-Net with fused Triton decoder kernels (transposed conv + skip concat + ReLU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["unet_fast", "unet_fast.adapters", "unet_fast.bench", "unet_fast.gpu", "unet_fast.kernels",
              "unet_fast.models", "unet_fast.ops", "unet_fast.workflow"],
    package_dir={"unet_fast": "unet_fast", "unet_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.5",
        # Triton ships wheels for Linux only; elsewhere the package runs its PyTorch paths.
        # Checked on 3.6 (the GPU machines) to 3.9 (CI); an older one makes up_concat run its PyTorch path.
        "triton>=3.6; platform_system == 'Linux'",
        "numpy",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # onnx + onnxruntime so that the suite also checks `unet-fast export` end to end; ruff is
        # the linter CI runs (ruff.toml); pytest-xdist runs the suite on two workers (README).
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "onnx", "onnxruntime", "ruff"],
        "onnx": ["onnx", "onnxruntime"],
        # The libraries `unet_fast.fuse` is checked against (tests/test_fuse_*.py). nnU-Net's
        # dynamic-network-architectures==0.4.4 is not listed: it requires timm, whose torchvision
        # pins another torch. Install it beside this extra with
        # `pip install --no-deps dynamic-network-architectures==0.4.4` (einops is its one other need).
        "interop": ["monai==1.6.1", "einops"],
    },
    entry_points={"console_scripts": ["unet-fast=unet_fast.cli:main"]},
)
