"""What the GPU would run, checked and prepared on a machine without one.

- static_compile.py  compiles the op's launches for sm_90 / sm_80 and reads the compiled code
- kernel_report.py   `unet-fast kernels`: the static report (registers, spills, shared memory ...)
- plan.py            the launches benchmarks/gpu_run.sh makes, recorded for its Triton cache
"""
