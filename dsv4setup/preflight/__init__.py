"""preflight: is this machine able to serve the profile? The doctor and the runbook's first step.

Parts:
- probing (the only I/O): `nvml` (GPU facts through NVML), `host_facts` (CPU, RAM, /dev/shm, disks,
  IOMMU), `toolchain` (nvcc, conda, gcc, git, the serving venv), `snapshot` (take, save, load the
  `dsv4setup.hardware/1` document), `schemalite` (its validator);
- judging (pure functions over the snapshot document): `target` (snapshot + the deployment the
  profile describes), `gpu_checks`, `host_checks`, `implied` (facts that imply serve args and env),
  `select` (which profile is judged), `report` (every check plus the recommendation); the views,
  rules and memory model they judge with are `dsv4setup.hardware`'s (`facts`, `rules` + `rules.yaml`,
  `memory`, `arch`);
- `step`: the runbook's `preflight` step.
Checks judge the document, never the live machine.
"""

HARDWARE_SCHEMA = "dsv4setup.hardware/1"
