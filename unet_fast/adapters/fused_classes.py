"""The class `fuse` gives each module it patches: per (library class, method, replacement) one
generated subclass, cached, whose method (`forward`, or ReferenceUNet's `up_step`) runs the
adapter's replacement (patches.py).

A subclass rather than a function bound in the instance's __dict__: `torch.nn.parallel.replicate`
(DataParallel) copies an instance's __dict__ into each replica, so a binding there computes every
replica with the original's modules; a method binds to the module it is called on. `isinstance`
with the library class stays true and the class keeps its name (the printed model is unchanged).
Pickling (torch.save(model)) and copy.deepcopy rebuild an instance through `_new_fused` from the
library class and the replacement, which pickle finds by name, so a process that never called
fuse loads such a model.

The method first re-checks what `fuse` checked of the module itself (the library class's method is
still the one fuse saw) and that no torch.jit.trace is recording (a trace must hold the library's
operations); otherwise the call runs the library's method.

TorchScript compiles a method from the source `inspect` finds (which follows `__wrapped__`) and
resolves its names in the function's globals and closure: the generated method carries the library
method as `__wrapped__` and the library module's globals, so `torch.jit.script` compiles the
library's own code (a scripted model has no fused op).
"""
import copyreg
import types

import torch

from unet_fast.adapters.calls import library_call

_CLASSES = {}


def _method(_unet_fast_dispatch):
    # The method's only free name is its closure cell, named so that no library's source
    # (compiled by TorchScript in this function's stead) resolves to it by accident.
    def method(self, *args, **kwargs):
        return _unet_fast_dispatch(self, args, kwargs)
    return method


def _dispatcher(base, attr, library, replacement):
    def dispatch(self, args, kwargs):
        current = getattr(base, attr)
        if current is library and not torch.jit.is_tracing():
            return replacement(library, self, *args, **kwargs)
        reason, detail = (("tracing", "torch.jit.trace records the library's operations") if current is library
                          else ("surgery", f"{base.__name__}.{attr} was replaced after unet_fast.fuse"))
        for step in self.__dict__.get("_unet_fast_steps", ()):
            if step.fusable:
                library_call(step.calls, step.path, reason, detail)
        return current(self, *args, **kwargs)
    return dispatch


def fused_class(base: type, attr: str, replacement) -> type:
    """The subclass of `base` whose `attr` runs `replacement(library_method, self, *args)`."""
    key = (base, attr, replacement)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    library = getattr(base, attr)
    template = _method(_dispatcher(base, attr, library, replacement))
    method = types.FunctionType(template.__code__, library.__globals__, library.__name__, None,
                                template.__closure__)
    method.__qualname__, method.__doc__, method.__wrapped__ = library.__qualname__, library.__doc__, library
    cls = type(base.__name__, (base,), {
        attr: method,
        "__module__": __name__,
        "__reduce_ex__": _reduce_ex,
        "_unet_fast_origin": key,
    })
    _CLASSES[key] = cls
    return cls


def origin(module):
    """(library class, method, replacement) of a module `fuse` patched, else None."""
    return type(module).__dict__.get("_unet_fast_origin")


def _new_fused(base, attr, replacement):
    cls = fused_class(base, attr, replacement)
    return cls.__new__(cls)


def _reduce_ex(self, protocol):
    # object's reduction names the class itself, which pickle cannot find by name: name the
    # library class and the replacement instead; the state (the module's __dict__) is the same.
    reduced = object.__reduce_ex__(self, max(protocol, 2))
    if reduced[0] is not copyreg.__newobj__ or reduced[1] != (type(self),):
        raise TypeError(f"unet_fast.fuse: cannot pickle a fused {type(self).__name__} ({reduced[0]!r})")
    return (_new_fused, type(self)._unet_fast_origin) + tuple(reduced[2:])
