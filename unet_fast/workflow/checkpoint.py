"""Checkpoints: weights + model configuration (+ optimizer and RNG state while training).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): opening a checkpoint never runs code from the file.

    {"format": "unet_fast.checkpoint", "version": 1,
     "config": {in_channels, out_channels, base_channels, up_relu, class_names},
     "model": state_dict, "epoch": int, "history": [per-epoch metrics],
     "train": {optimizer, scaler, step, rng, args, world_size}   # absent in best.pt (weights only)
    }
"""
import io
import os
import random
import re
import stat
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from unet_fast.workflow.atomic_write import atomic_write, one_line
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet
from unet_fast.workflow.metrics import check_class_names

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
    """Load and sanity-check a checkpoint (InputError, naming the file, if it is not one of ours).

    Besides the format: a complete model configuration, one distinct string name per output
    class, and weights that are all finite (a NaN weight would predict one class everywhere
    without a word)."""
    path = os.fsdecode(os.fspath(path))  # a bytes path is a path too
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path} not found")
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder, not a file")
    source, size = path, None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # A pipe (`<(curl ...)`) or a device: torch.load seeks, so read it whole first.
            with open(path, "rb") as f:
                data = f.read()
            source, size = io.BytesIO(data), len(data)
        with warnings.catch_warnings():
            # torch warns about old pickle protocols on stderr: keep the error to one line.
            warnings.simplefilter("ignore")
            ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a pickle, forbidden global...: all mean unusable
        raise InputError(f"cannot read checkpoint {path}: {_why_unreadable(path, e, size)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a unet_fast checkpoint (written by `unet-fast train`)")
    config = ckpt.get("config")
    if not isinstance(config, dict) or any(k not in config for k in MODEL_KEYS + ("class_names",)):
        raise InputError(f"checkpoint {path} has no complete model configuration")
    out_channels = config["out_channels"]
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise InputError(f"checkpoint {path} has an invalid configuration: out_channels={out_channels!r}")
    check_class_names(config["class_names"], out_channels, f"checkpoint {path}")
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"checkpoint {path} has no weights (its `model` is not a dict of tensors)")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"checkpoint {path}: weight {name} holds NaN or infinite values; the "
                             "model would predict nonsense (use an earlier checkpoint of the run)")
    return ckpt


def _why_unreadable(path, error: Exception, size=None) -> str:
    """What torch.load's error means for a user (its own text runs to many lines, and its advice
    to pass weights_only=False is not one to follow for a file of unknown origin)."""
    if isinstance(error, PermissionError):
        return "permission denied"
    if (os.path.getsize(path) if size is None else size) == 0:
        return "the file is empty"
    if "Weights only load failed" in str(error):
        # weights_only stops at the first object that is not a tensor or a plain value: the file
        # may be a whole pickled model, or carry code. Nothing in it ran.
        named = re.search(r"GLOBAL (\S+)", str(error))
        what = f" ({named.group(1)})" if named else ""
        return f"refused: it holds objects other than tensors{what} (not loaded, nothing executed)"
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
    model.class_names = check_class_names(config["class_names"], model.out_channels, f"checkpoint {path}")
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resumable(ckpt: dict, path, model: torch.nn.Module) -> None:
    """InputError naming the first field of a last.pt that cannot be resumed into `model`.

    Checked before anything is restored: the weights' names and shapes, the epoch, history and
    step, the optimizer state (AdamW's, one entry per parameter with the parameter's shape), the
    GradScaler state and the RNG state (tried, then the process's own put back)."""
    def bad(field, why):
        return InputError(f"checkpoint {path} cannot be resumed: {field} {why}")

    train = ckpt["train"]
    if not isinstance(train, dict):
        raise bad("train", "is not a dict")
    for key in ("optimizer", "scaler", "step", "rng", "args"):
        if key not in train:
            raise bad(f"train.{key}", "is missing")
    for key in ("epoch", "history"):
        if key not in ckpt:
            raise bad(key, "is missing")
    if not _is_int(ckpt["epoch"]) or ckpt["epoch"] < 0:
        raise bad("epoch", f"must be an integer >= 0, got {ckpt['epoch']!r:.40}")
    if not _is_int(train["step"]) or train["step"] < 0:
        raise bad("train.step", f"must be an integer >= 0, got {train['step']!r:.40}")
    if not isinstance(ckpt["history"], list) or not all(isinstance(h, dict) for h in ckpt["history"]):
        raise bad("history", "must be a list of per-epoch records")
    if len(ckpt["history"]) != ckpt["epoch"]:
        raise bad("history", f"holds {len(ckpt['history'])} epochs, but epoch is {ckpt['epoch']}")
    if ckpt.get("best") is not None and not isinstance(ckpt["best"], dict):
        raise bad("best", "must be a dict")
    if not isinstance(train["args"], dict):
        raise bad("train.args", "must be a dict")
    if "world_size" in train and (not _is_int(train["world_size"]) or train["world_size"] < 1):
        raise bad("train.world_size", f"must be an integer >= 1, got {train['world_size']!r:.40}")

    expected = model.state_dict()
    weights = ckpt["model"]
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise bad("model", f"does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise bad(f"model.{name}", f"has shape {tuple(weights[name].shape)}, the model's is "
                                       f"{tuple(tensor.shape)}")

    _check_optimizer(train["optimizer"], list(model.parameters()), bad)
    scaler = train["scaler"]
    if not isinstance(scaler, dict):
        raise bad("train.scaler", "must be a dict")
    if scaler:
        for key in ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"):
            value = scaler.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
                raise bad(f"train.scaler.{key}", f"must be a number, got {value!r:.40}")
    _check_rng(train["rng"], bad)


def _check_optimizer(state, params, bad) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise bad("train.optimizer", "is not an optimizer state (state and param_groups)")
    ids = []
    for group in state["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise bad("train.optimizer.param_groups", "is not a list of parameter groups")
        ids.extend(group["params"])
    if len(ids) != len(params):
        raise bad("train.optimizer", f"is for {len(ids)} parameters, this model has {len(params)} "
                                     "(another model's optimizer)")
    for pid, param in zip(ids, params):
        entry = state["state"].get(pid)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise bad(f"train.optimizer.state[{pid}]", "is not a dict")
        for key in ("exp_avg", "exp_avg_sq"):
            tensor = entry.get(key)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(param.shape):
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise bad(f"train.optimizer.state[{pid}].{key}",
                          f"is {shape}, the parameter is {tuple(param.shape)} (another model's optimizer)")
        if not isinstance(entry.get("step"), (torch.Tensor, int, float)):
            raise bad(f"train.optimizer.state[{pid}].step", "is missing")


def _check_rng(state, bad) -> None:
    """Set the saved RNG state once to prove it is usable, then put the current one back."""
    if not isinstance(state, dict):
        raise bad("train.rng", "must be a dict")
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        set_rng_state(state)
    except Exception as e:  # TypeError, ValueError, KeyError, RuntimeError: all mean garbage
        raise bad("train.rng", f"is not a usable random-number state ({one_line(e)[:120]})") from None
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
