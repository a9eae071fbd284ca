"""How often each fused decoder step ran fused and how often it ran the library's own code, and why
(`fuse_report(model).calls`); the first time a step runs the library's code for a reason, one
UserWarning names the step, the reason and the cure where there is one.

Calls are counted in eager mode and under torch.jit.trace; inside a torch.compile'd graph the
counters are left alone (a compiled graph replays no Python).
"""
import warnings
from dataclasses import dataclass, field
from typing import Dict, Set

import torch

# What the user can do about a reason, where something can be done.
CURES = {
    "MetaTensor input": "pass x.as_tensor() to the network, or call monai.data.set_track_meta(False)",
    "tensor subclass input": "pass a plain torch.Tensor",
    "size mismatch": ("pad the network's input to a multiple of its total stride (the product of the "
                      "encoder's strides), so every skip is exactly stride x the upsampled input's size"),
    "surgery": "call unet_fast.fuse(model) again after changing the model",
    "dtype": "keep the input, the skip and the parameters in one dtype (float64 is left by autocast)",
}


@dataclass
class StepCalls:
    """fused: calls the fused op served; library: calls the library's code ran, per reason."""
    fused: int = 0
    library: Dict[str, int] = field(default_factory=dict)
    warned: Set[str] = field(default_factory=set)

    def count_fused(self) -> None:
        if not torch.compiler.is_compiling():
            self.fused += 1

    def __str__(self) -> str:
        reasons = ", ".join(f"{why}: {n}" for why, n in self.library.items())
        return f"{self.fused} fused, {sum(self.library.values())} library" + (f" ({reasons})" if reasons else "")


def library_call(calls: StepCalls, path: str, reason: str, detail: str) -> None:
    """Count one call the library's code ran for `reason`; warn the first time per step and reason."""
    if torch.compiler.is_compiling():
        return
    calls.library[reason] = calls.library.get(reason, 0) + 1
    if reason in calls.warned:
        return
    calls.warned.add(reason)
    cure = CURES.get(reason)
    warnings.warn(f"unet_fast.fuse: decoder step {path} ran the library's own code, not the fused op "
                  f"({reason}: {detail})" + (f"; to fuse it: {cure}" if cure else ""), UserWarning, stacklevel=2)
