"""The hardware snapshot: what NVML and the host say about this machine, as one JSON document.

`snapshot.take_snapshot` probes (NVML via `nvml`, host facts via `host`, tools via `toolchain`);
`snapshot.load_snapshot` reads a saved one. Checks judge the document, never the live machine.
"""

HARDWARE_SCHEMA = "dsv4setup.hardware/1"
