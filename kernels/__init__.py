"""Triton kernels of unet_fast, installed as `unet_fast.kernels`.

Importing this package does not import Triton, so the PyTorch paths work where Triton is missing;
import `unet_fast.kernels.up_concat_forward` / `up_concat_backward` for the launchers.
"""
