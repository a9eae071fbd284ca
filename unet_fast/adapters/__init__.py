"""Adapters that put the fused decoder step inside other libraries' U-Nets (`unet_fast.fuse`).

    import unet_fast
    model = unet_fast.fuse(model, verbose=True)  # fused 5 of 5 decoder steps (decoder.transpconvs[0..4]); left: none

`fuse` walks the module tree and gives each module it recognizes, by class and by structure, a
generated subclass of its class whose forward is the adapter's replacement (fused_classes.py,
patches.py):

- dynamic_network_architectures 0.4.4 (nnU-Net): UNetDecoder (PlainConvUNet, ResidualEncoderUNet);
  step transpconvs[s], cat((up, skip)).
- monai 1.6.1: UpCat (BasicUNet) with upsample="deconv"; step upsample.deconv, cat([skip, up]).
- monai 1.6.1: UnetUpBlock (DynUNet), UnetrUpBlock (UNETR, SwinUNETR); step transp_conv.conv,
  cat((up, skip)).
- the lesson's U-Net (any class with its forward): enc1..4, upconv1..3, dec1..3; step upconvN,
  cat([up, skip]).
- unet_fast.ReferenceUNet: up_step; step upconvN, cat([up, skip]), ReLU when up_relu.

A module is patched only when its class's forward is, token for token, the forward the patch
reproduces (fingerprint.py: another library version with the same forward is fused, one whose
forward differs is left and reported) and its modules have the structure that forward relies on;
each step's ConvTranspose must have kernel == stride and no padding, output_padding, dilation or
groups. At every call a fused step re-checks all of that (surgery after fuse sends the call to
the library's code) and what the op computes exactly (step.py). Parameters, buffers and
state_dict are untouched. What was fused and what was left, and why, and how each fused step's
calls ran: `fuse_report(model)`.
"""
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from unet_fast.adapters import patches
from unet_fast.adapters.calls import StepCalls
from unet_fast.adapters.fingerprint import forward_fingerprint
from unet_fast.adapters.fused_classes import fused_class, origin
from unet_fast.adapters.step import CONV_TRANSPOSE, Step, child, static_problem, structure

# The versions the adapters were written and tested against (`pip install -e ".[interop]"`).
SUPPORTED_VERSIONS = {"dynamic_network_architectures": "0.4.4", "monai": "1.6.1"}

# forward fingerprints (fingerprint.py) of the checked versions, per (module, class, method).
_DNA_DECODER = ("dynamic_network_architectures.building_blocks.unet_decoder", "UNetDecoder")
_MONAI_UPCAT = ("monai.networks.nets.basic_unet", "UpCat")
_MONAI_UNET_UP = ("monai.networks.blocks.dynunet_block", "UnetUpBlock")
_MONAI_UNETR_UP = ("monai.networks.blocks.unetr_block", "UnetrUpBlock")
FINGERPRINTS = {
    _DNA_DECODER: {"1691bca0a1f04c27"},
    _MONAI_UPCAT: {"48c7165c57d26206"},
    _MONAI_UNET_UP: {"241ab2e86c49dff7"},
    _MONAI_UNETR_UP: {"241ab2e86c49dff7"},
}
_LESSON_FINGERPRINTS = {"9cd422fece415516"}
_REFERENCE_UP_STEP_FINGERPRINTS = {"eaa173b70c02316d"}


@dataclass
class FuseReport:
    """fused: (decoder step's ConvTranspose path, the module that computes it); left: (path, why)."""
    fused: List[Tuple[str, str]] = field(default_factory=list)
    left: List[Tuple[str, str]] = field(default_factory=list)
    # ConvTranspose modules outside every decoder step fuse knows (path, class of the module
    # holding it): an unknown model's, or a known one's that is no decoder step (UNETR's encoder).
    others: List[Tuple[str, str]] = field(default_factory=list)
    # Per fused step (path as in `fused`): the calls it served fused and those that ran the
    # library's code, per reason (calls.py); live, counted on the model's modules.
    calls: Dict[str, StepCalls] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.fused) + len(self.left)

    def calls_text(self) -> str:
        """One line per fused step: 'decoder.transpconvs.0: 3 fused, 1 library (size mismatch: 1)'."""
        return "\n".join(f"{path}: {calls}" for path, calls in self.calls.items())

    def __str__(self) -> str:
        fused = f" ({_compress([p for p, _ in self.fused])})" if self.fused else ""
        left = "; ".join(f"{p or '<model>'}: {why}" for p, why in self.left) or "none"
        text = f"fused {len(self.fused)} of {self.steps} decoder steps{fused}; left: {left}"
        if self.others:
            text += ("; not in a decoder step unet_fast.fuse knows, left as they are: "
                     + ", ".join(f"{p} (in {owner})" for p, owner in self.others))
        return text


def _compress(paths: List[str]) -> str:
    """decoder.transpconvs.0 .. decoder.transpconvs.4 -> decoder.transpconvs[0..4]."""
    out, i = [], 0
    while i < len(paths):
        m = re.fullmatch(r"(.*?)\.(\d+)((?:\..*)?)", paths[i])
        j = i
        if m:
            while j + 1 < len(paths):
                n = re.fullmatch(r"(.*?)\.(\d+)((?:\..*)?)", paths[j + 1])
                if not (n and n.group(1) == m.group(1) and n.group(3) == m.group(3)
                        and int(n.group(2)) == int(m.group(2)) + (j + 1 - i)):
                    break
                j += 1
        if j > i:
            out.append(f"{m.group(1)}[{m.group(2)}..{int(m.group(2)) + j - i}]{m.group(3)}")
        else:
            out.append(paths[i])
        i = j + 1
    return ", ".join(out)


def _library_class(key) -> Optional[type]:
    """The library's class if its module is imported (a model holding one has imported it)."""
    module = sys.modules.get(key[0])
    return getattr(module, key[1], None) if module is not None else None


def _version(key) -> str:
    top = key[0].split(".")[0]
    return f"{top} {getattr(sys.modules.get(top), '__version__', '?')}"


def _is_sequential_of(container, name) -> Optional[nn.Module]:
    """container[name] when container is an nn.Sequential running only that child, else None."""
    if not isinstance(container, nn.Sequential) or type(container).forward is not nn.Sequential.forward:
        return None
    return child(container, name) if list(container._modules) == [name] else None


# Each recognizer: (steps(module) -> [(relative ConvTranspose path, conv, the modules the library
# calls around it)] or a str saying why the module's structure is not the one its forward needs,
# attribute to patch, replacement).
def _dna_decoder_steps(m):
    if not (isinstance(getattr(m, "transpconvs", None), nn.ModuleList)
            and isinstance(getattr(m, "stages", None), nn.ModuleList)
            and len(m.transpconvs) == len(m.stages)):
        return "transpconvs and stages are not ModuleLists of one length"
    return [(f"transpconvs.{s}", conv, ()) for s, conv in enumerate(m.transpconvs)]


def _monai_upcat_steps(m):
    conv = _is_sequential_of(getattr(m, "upsample", None), "deconv")
    if conv is None:
        names = [n for n, _ in m.upsample.named_children()] if isinstance(m.upsample, nn.Module) else []
        return f"upsample is not mode 'deconv' (its modules: {', '.join(names) or 'none'})"
    return [("upsample.deconv", conv, (m.upsample,))]


def _monai_up_block_steps(m):
    conv = _is_sequential_of(getattr(m, "transp_conv", None), "conv")
    if conv is None:
        return "transp_conv is not a Convolution(conv_only=True) holding one transposed convolution"
    return [("transp_conv.conv", conv, (m.transp_conv,))]


def _lesson_steps(m):
    names = ("upconv3", "upconv2", "upconv1")
    if not all(isinstance(getattr(m, n, None), nn.Module) for n in names):
        return "upconv1..3 missing"
    return [(n, getattr(m, n), ()) for n in names]


_LIBRARY = {
    _DNA_DECODER: (_dna_decoder_steps, "forward", patches.unet_decoder_forward),
    _MONAI_UPCAT: (_monai_upcat_steps, "forward", patches.monai_upcat_forward),
    _MONAI_UNET_UP: (_monai_up_block_steps, "forward", patches.monai_up_block_forward),
    _MONAI_UNETR_UP: (_monai_up_block_steps, "forward", patches.monai_up_block_forward),
}


def _recognize(m) -> Optional[Tuple[str, Callable, str, Callable, Optional[str]]]:
    """(kind, steps, attribute, replacement, refusal) for a module fuse knows, else None."""
    from unet_fast.models.unet import UNet
    from unet_fast.reference import ReferenceUNet
    fused_from = origin(m)
    cls = fused_from[0] if fused_from else type(m)  # a module fused before: its library class
    for key, (steps, attr, replacement) in _LIBRARY.items():
        lib_cls = _library_class(key)
        if lib_cls is None or not isinstance(m, lib_cls):
            continue
        kind = key[1]
        if getattr(cls, attr) is not getattr(lib_cls, attr):
            return kind, steps, attr, replacement, f"{cls.__name__} overrides {key[1]}.{attr}"
        if forward_fingerprint(lib_cls, attr) not in FINGERPRINTS[key]:
            return kind, steps, attr, replacement, (
                f"{key[1]}.{attr} of {_version(key)} differs from the one unet_fast.fuse reproduces "
                f"({key[0].split('.')[0]} {SUPPORTED_VERSIONS[key[0].split('.')[0]]}); left unfused")
        return kind, steps, attr, replacement, None
    if isinstance(m, UNet):
        return "unet_fast.UNet", _lesson_steps, None, None, None
    if isinstance(m, ReferenceUNet):
        if forward_fingerprint(cls, "up_step") not in _REFERENCE_UP_STEP_FINGERPRINTS:
            return "ReferenceUNet", _lesson_steps, "up_step", patches.reference_up_step, \
                f"{cls.__name__}.up_step differs from ReferenceUNet's"
        return "ReferenceUNet", _lesson_steps, "up_step", patches.reference_up_step, None
    if all(isinstance(getattr(m, n, None), nn.Module) for n in ("enc1", "upconv1", "dec1")) \
            and forward_fingerprint(cls) in _LESSON_FINGERPRINTS:
        return "lesson U-Net", _lesson_steps, "forward", patches.lesson_forward, None
    return None


def fuse(model: nn.Module, verbose: bool = False) -> nn.Module:
    """Patch `model` in place so that each decoder step it recognizes computes through the fused
    `up_concat`; return `model`. Idempotent; parameters, buffers and state_dict untouched. A call
    the fused step cannot compute exactly (odd sizes, forward or backward hooks, dtypes or devices
    the op does not take, tensor subclasses, tracing, modules changed since fuse) runs the
    library's own code. `fuse_report(model)` says what was fused and what was left, and why, and
    counts each fused step's calls; verbose=True prints it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse expects an nn.Module, got {type(model).__name__}")
    report = FuseReport()
    claimed = set()
    for name, m in model.named_modules():
        found = _recognize(m)
        if found is None:
            continue
        kind, steps_of, attr, replacement, refusal = found
        prefix = f"{name}." if name else ""
        counted = {}
        if origin(m) is not None:  # fused before: judged afresh as its library class, counts kept
            m.__class__ = origin(m)[0]
            counted = {step.path: step.calls for step in m.__dict__.pop("_unet_fast_steps", ())}
        steps = steps_of(m)
        if isinstance(steps, str):
            report.left.append((name, f"{kind} not fused: {steps}"))
            continue
        for _, conv, _ in steps:
            claimed.add(id(conv))
        if refusal is not None:
            warnings.warn(f"unet_fast.fuse: {name or '<model>'}: {refusal}", stacklevel=2)
            report.left.extend((prefix + p, refusal) for p, _, _ in steps)
            continue
        problems = [static_problem(conv) for _, conv, _ in steps]
        if attr is None:  # unet_fast.UNet: its steps already call up_concat
            report.fused.extend((prefix + p, kind) for p, _, _ in steps)
            continue
        if kind == "ReferenceUNet" and any(problems):
            # one up_step serves all three steps: patch it only when all three can be fused
            report.left.extend((prefix + p, f"ReferenceUNet not fused: {why or 'another step cannot be'}")
                               for (p, _, _), why in zip(steps, problems))
            continue
        if attr in m.__dict__:
            report.left.extend((prefix + p, f"{kind}.{attr} already replaced on the instance by someone else")
                               for p, _, _ in steps)
            continue
        if all(problems):
            report.left.extend((prefix + p, why) for (p, _, _), why in zip(steps, problems))
            continue
        m._unet_fast_steps = tuple(
            Step(prefix + p, p, why is None, structure(conv, wrappers), counted.get(prefix + p) or StepCalls())
            for (p, conv, wrappers), why in zip(steps, problems))
        m.__class__ = fused_class(type(m), attr, replacement)
        for step, why in zip(m._unet_fast_steps, problems):
            if why is None:
                report.fused.append((step.path, kind))
                report.calls[step.path] = step.calls
            else:
                report.left.append((step.path, why))
    for name, m in model.named_modules():
        if isinstance(m, CONV_TRANSPOSE) and id(m) not in claimed:
            report.others.append((name, _owner(model, name)))
    model._unet_fast_fuse_report = report
    if verbose:
        print(report)
    return model


def _owner(model, name) -> str:
    """The class of the nearest module above `name` that is not a plain container."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i]))
        if not isinstance(owner, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return type(owner).__name__
    return type(model).__name__


def fuse_report(model: nn.Module) -> Optional[FuseReport]:
    """What the last `fuse(model)` fused and left, and why, and each fused step's calls so far;
    None if the model was never fused. A torch.compile'd model (OptimizedModule) or a
    DataParallel / DistributedDataParallel wrapper reports the model it wraps."""
    report = model.__dict__.get("_unet_fast_fuse_report")
    if report is None:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if isinstance(inner, nn.Module):
            return fuse_report(inner)
    return report


__all__ = ["fuse", "fuse_report", "FuseReport", "SUPPORTED_VERSIONS"]
