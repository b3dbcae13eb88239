"""hardware: what is known about GPUs and hosts, below the profiles that match and derive from it.

Pure and read-only; the probe that takes a snapshot of the live machine stays in `preflight`.
- `facts`: views over a `dsv4setup.hardware/1` snapshot (visible GPUs, compute capability, links, memory);
- `rules` + `rules.yaml`: every fact and threshold (families, memory sizes, driver builds, serve-arg rules);
- `memory`: the GPU memory a deployment needs and what a TP group gives it;
- `arch` + `arches.yaml`: compute capability -> nvcc `-arch` -> TORCH_CUDA_ARCH_LIST, per CUDA release.
"""
