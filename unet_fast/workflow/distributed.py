"""Multi-process training: `torchrun --nproc_per_node=K -m unet_fast train ...`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs as a single process
and none of this touches torch.distributed. Backend: nccl when the device is CUDA, gloo on the
CPU. Only rank 0 writes files or prints the per-epoch log.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from unet_fast.errors import InputError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: Optional[str], local_rank: int = 0) -> torch.device:
    try:
        device = torch.device(name or default_device())
    except RuntimeError:  # torch's message lists twenty device types; the usual ones suffice
        raise InputError(f"unknown device {name!r} (use cpu, cuda or cuda:INDEX)") from None
    if device.type == "meta":  # torch accepts it, but its tensors have shapes and no values
        raise InputError(f"device {name} holds no data and cannot train or predict "
                       "(use cpu, cuda or cuda:INDEX)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name} requested but CUDA is not available here")
        if device.index is None:  # one GPU per process under torchrun
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise InputError(f"device {name} requested but this machine has "
                           f"{torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        try:  # mps, xpu, ...: known to torch, but maybe not built in or not present here
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):
            raise InputError(f"device {name} is not available here (this torch build or machine "
                           "lacks it)") from None
    return device


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes the device holds at most (a GPU's total, the machine's RAM), or None if unknown:
    the bound past which a size is refused up front rather than failing mid-allocation."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _env_int(name: str, default: int, low: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    # ASCII digits only: int() would also read '١' (Arabic-Indic one) as 1.
    if not (text.isascii() and text.lstrip("+").isdigit()) or int(text) < low:
        raise InputError(f"environment variable {name}={os.environ[name]!r} must be a whole number "
                         f">= {low}; torchrun sets it (unset it to run as one process)")
    return int(text)


def launch_environment() -> tuple:
    """(world_size, rank, local_rank) from torchrun's variables, each checked: InputError naming
    the variable for a value that is not a whole number, RANK >= WORLD_SIZE, or WORLD_SIZE > 1
    without the rendezvous address (MASTER_ADDR, MASTER_PORT) that only a launcher provides."""
    world_size = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local_rank = _env_int("LOCAL_RANK", 0, 0)
    if rank >= world_size:
        raise InputError(f"environment variable RANK={rank} must be below WORLD_SIZE={world_size}")
    if local_rank >= world_size:
        raise InputError(f"environment variable LOCAL_RANK={local_rank} must be below WORLD_SIZE={world_size}")
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
        if missing:
            raise InputError(f"WORLD_SIZE={world_size} asks for {world_size} processes, but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set: launch with torchrun "
                             f"(torchrun --nproc_per_node={world_size} -m unet_fast train ...), or unset "
                             "WORLD_SIZE to run as one process")
        _env_int("MASTER_PORT", 0, 1)
    return world_size, rank, local_rank


def setup(device_name: Optional[str]) -> Context:
    """Join the process group if torchrun started us; pick this process's device."""
    world_size, rank, local_rank = launch_environment()
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks (a no-op for one process); returns a CPU tensor."""
    if not ctx.distributed:
        return tensor
    # nccl reduces on the GPU, gloo on the CPU
    t = tensor.to(ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu()


def any_rank(ctx: Context, flag: bool) -> bool:
    """True on every rank if `flag` is True on any (one process: `flag` itself).

    For decisions that end the loop, such as a non-finite loss seen by one rank: a rank that
    stopped alone would leave the others waiting forever in the next gradient all-reduce."""
    if not ctx.distributed:
        return flag
    return bool(all_reduce_sum(ctx, torch.tensor([int(flag)])).item())


def agree_on_error(ctx: Context, message: Optional[str]) -> None:
    """Raise InputError on every rank if rank 0 found `message` (e.g. an unwritable --out folder).

    Checks only rank 0 makes must be shared, or the other ranks would wait forever at the next
    collective while rank 0 exits.
    """
    if ctx.distributed:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise InputError(message)
