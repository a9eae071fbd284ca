"""When a fused op may read a module's weights directly, and when it must call the module.

A fused op that takes `module.weight` and `module.bias` itself skips `module(x)`, and with it
everything torch attaches to that call: forward hooks (feature extraction), forward pre-hooks
(the hook-based `torch.nn.utils.weight_norm` and `torch.nn.utils.prune`, which recompute the
weight just before each call, so reading it directly gives the weight of the previous call),
backward hooks and pre-hooks (which see or rewrite the module's gradients), and torch's global
module hooks. Parametrizations (`torch.nn.utils.parametrize`,
`torch.nn.utils.parametrizations.weight_norm`) recompute the weight on attribute access, so the
fused path already sees the effective weight and needs no call.
"""
from torch import nn
from torch.nn.modules import module as _module


# Every hook table torch consults when a module is called: forward and backward (full backward
# hooks and pre-hooks wrap the module's call, so they fire only when the module is called).
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def calls_module(module: nn.Module) -> bool:
    """True when the fused op must call `module` instead of reading its weights: the module, or
    torch's global module registry, carries forward or backward hooks or pre-hooks."""
    for table in _HOOK_TABLES:
        if getattr(module, table, None) or getattr(_module, "_global" + table, None):
            return True
    return False
