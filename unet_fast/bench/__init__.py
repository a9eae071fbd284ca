"""The benchmark harness behind `unet-fast bench` and `pytest benchmarks/`.

One set of cases for both, so a number in the README and a number from CI mean the same thing:
- cases.py     what is measured: shapes, dtypes, layouts, modes, and the inputs for each
- providers.py who is measured: the fused op / UNet, the eager and compiled references
- timing.py    how long it takes: triton.testing.do_bench on a GPU, perf_counter on the CPU
- roofline.py  how close to the memory floor: bytes moved, GB/s, the device's copy ceiling
- runner.py    one row per (case, dtype, layout, mode, provider)
- report.py    the table, the JSON file, the speedup plot
- cli.py       the `bench` subcommand
"""
