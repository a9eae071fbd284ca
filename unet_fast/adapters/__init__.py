"""Adapters that put the fused decoder step inside other libraries' U-Nets (`unet_fast.fuse`)."""
