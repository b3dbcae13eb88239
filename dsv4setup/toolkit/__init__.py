"""The CUDA toolkit without sudo: nvcc probes, the conda and pip install routes (arch names: `hardware.arch`)."""
