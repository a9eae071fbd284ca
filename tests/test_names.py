"""The one name table: every command takes the same dtype and layout spellings."""
import pytest
import torch

from unet_fast import names
from unet_fast.bench import cli as bench_cli
from unet_fast.errors import InputError
from unet_fast.gpu import kernel_report


@pytest.mark.parametrize("text, want", [("bf16", "bf16"), ("bfloat16", "bf16"), ("float32", "fp32"),
                                        ("FP16", "fp16"), ("half", "fp16"), ("tf32", "tf32"), ("float64", "fp64")])
def test_dtype_spellings_map_to_one_name(text, want):
    assert names.dtype_name(text) == want


def test_names_round_trip_to_torch():
    for name, (dtype, tf32) in names.DTYPES.items():
        assert names.torch_dtype(name) is dtype and names.tf32_on(name) == tf32
        if not tf32:
            assert names.name_of(dtype) == name
    assert names.memory_format("channels_last", 4) == torch.channels_last
    assert names.memory_format("channels_last_3d", 5) == torch.channels_last_3d


@pytest.mark.parametrize("choose", [
    lambda text: bench_cli._choices(text, ("bf16", "fp16", "fp32"), "--dtype", names.dtype_name),
    lambda text: kernel_report._choices(text, kernel_report.DTYPE_CHOICES, "--dtype", names.dtype_name),
], ids=["bench", "kernels"])
def test_bench_and_kernels_take_the_same_spellings(choose):
    assert choose("bfloat16,fp16") == ["bf16", "fp16"]
    assert choose("bf16") == ["bf16"]
    with pytest.raises(InputError, match="--dtype: unknown 'int8'"):
        choose("bf16,int8")
