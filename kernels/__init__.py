"""Triton kernels of unet_fast, installed as `unet_fast.kernels`.

Importing this package does not import Triton, so the PyTorch paths work where Triton is missing;
import `unet_fast.kernels.up_concat_launch` for the launchers (launch_forward, launch_backward);
`unet_fast.kernels.byte_model` is the kernels' byte model (pure Python, no torch, no Triton).
"""
