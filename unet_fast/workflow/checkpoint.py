"""Checkpoints: weights + model configuration (+ optimizer and RNG state while training).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): opening a checkpoint never runs code from the file.

    {"format": "unet_fast.checkpoint", "version": 1,
     "config": {in_channels, out_channels, base_channels, up_relu, class_names},
     "model": state_dict, "epoch": int, "history": [per-epoch metrics],
     "train": {optimizer, scaler, step, rng, args, world_size}   # absent in best.pt (weights only)
    }
"""
import os
import random
import re
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from unet_fast.workflow.atomic_write import atomic_write, one_line
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet

FORMAT = "unet_fast.checkpoint"
VERSION = 1
MODEL_KEYS = ("in_channels", "out_channels", "base_channels", "up_relu")


def model_config(model, class_names) -> dict:
    config = dict(model.config())
    config["class_names"] = list(class_names)
    return config


def save(path, payload: dict) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    A full disk or a failing write ends in InputError naming `path`; the file it would have
    replaced is kept and the temporary file removed."""
    payload = dict(payload, format=FORMAT, version=VERSION)
    atomic_write(path, lambda tmp: _torch_save(payload, tmp))


def _torch_save(payload: dict, path: str) -> None:
    try:
        torch.save(payload, path)
    except RuntimeError as e:
        # torch's zip writer reports a failed file write (a full disk, a quota) as RuntimeError
        # ("PytorchStreamWriter failed writing file ..."): an OSError, as far as callers care.
        raise OSError(f"torch.save failed: {one_line(e)}") from e


def read(path, map_location="cpu") -> dict:
    """Load and sanity-check a checkpoint (InputError, naming the file, if it is not one of ours)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path} not found")
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder, not a file")
    try:
        with warnings.catch_warnings():
            # torch warns about old pickle protocols on stderr: keep the error to one line.
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a pickle, forbidden global...: all mean unusable
        raise InputError(f"cannot read checkpoint {path}: {_why_unreadable(path, e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a unet_fast checkpoint (written by `unet-fast train`)")
    config = ckpt.get("config")
    if not isinstance(config, dict) or any(k not in config for k in MODEL_KEYS + ("class_names",)):
        raise InputError(f"checkpoint {path} has no complete model configuration")
    if len(config["class_names"]) != config["out_channels"]:
        raise InputError(f"checkpoint {path} names {len(config['class_names'])} classes for "
                       f"out_channels={config['out_channels']}")
    return ckpt


def _why_unreadable(path, error: Exception) -> str:
    """What torch.load's error means for a user (its own text runs to many lines, and its advice
    to pass weights_only=False is not one to follow for a file of unknown origin)."""
    if isinstance(error, PermissionError):
        return "permission denied"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return (f"it holds a Python object ({refused.group(1)}) that loading with weights_only=True "
                "refuses; a unet_fast checkpoint holds only tensors and plain values")
    return "not a PyTorch checkpoint file, or a truncated one"


def check_config(ckpt: dict, wanted: Dict[str, object], path) -> None:
    """InputError if the checkpoint was trained with another configuration than `wanted`."""
    config = ckpt["config"]
    diffs = [f"{k}={config.get(k)!r} (not {v!r})" for k, v in wanted.items() if config.get(k) != v]
    if diffs:
        raise InputError(f"checkpoint {path} is for another configuration: {', '.join(diffs)}")


def build_model(ckpt: dict, path, model_class=UNet) -> torch.nn.Module:
    """A `model_class` built from the checkpoint's configuration, with its weights loaded."""
    config = ckpt["config"]
    try:
        model = model_class(**{k: config[k] for k in MODEL_KEYS})
    except (TypeError, ValueError) as e:
        raise InputError(f"checkpoint {path} has an invalid configuration: {one_line(e)}") from e
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise InputError(f"checkpoint {path}: its weights do not fit "
                       f"{model_class.__name__}({', '.join(f'{k}={config[k]}' for k in MODEL_KEYS)}): "
                       f"{one_line(e)[:300]}") from e
    model.class_names = list(config["class_names"])
    return model


def load(checkpoint, device: Optional[str] = None) -> UNet:
    """The UNet in `checkpoint` (a file written by `unet-fast train` or `demo`), in eval mode.

    `device` defaults to the CPU. The class names are in `model.class_names`. Raises
    unet_fast.errors.InputError (one line, naming the file) if the file is missing or not a
    unet_fast checkpoint.
    """
    ckpt = read(checkpoint)
    model = build_model(ckpt, checkpoint)
    return model.to(device or "cpu").eval()


# ---- RNG state, stored as tensors and plain numbers so weights_only loading accepts it ----

def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
