"""The CUDA toolkit without sudo: arch names, nvcc probes, the conda and pip install routes."""
