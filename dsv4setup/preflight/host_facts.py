"""Host facts without root: CPU, RAM, /dev/shm, disks, OS, IOMMU mode."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

IOMMU_MODES = ("off", "passthrough", "translated", "unknown")

_PASSTHROUGH_FLAGS = {("iommu", "pt"), ("iommu.passthrough", "1"), ("iommu.passthrough", "on"),
                      ("iommu.passthrough", "y")}
_TRANSLATED_FLAGS = {("iommu.passthrough", "0"), ("iommu.passthrough", "off"), ("iommu.passthrough", "n"),
                     ("iommu", "nopt")}
_OFF_FLAGS = {("iommu", "off"), ("intel_iommu", "off"), ("amd_iommu", "off")}


def _cmdline_flags(cmdline: str) -> set[tuple[str, str]]:
    """`intel_iommu=on,sm_on iommu=pt` -> {("intel_iommu", "on"), ("intel_iommu", "sm_on"), ("iommu", "pt")}."""
    flags: set[tuple[str, str]] = set()
    for token in cmdline.split():
        if token == "--":  # what follows belongs to init, not the kernel
            break
        key, sep, value = token.partition("=")
        if sep:
            flags.update((key.lower(), v.lower()) for v in value.split(","))
    return flags


def parse_iommu(cmdline: str, iommu_dirs: Sequence[str] | None,
                group_types: Sequence[str] | None = None) -> str:
    """The IOMMU mode as off / passthrough / translated / unknown.

    `iommu_dirs`: the entries of /sys/class/iommu (None when unreadable); an empty list means no
    IOMMU is active. `group_types`: /sys/kernel/iommu_groups/*/type when readable ("identity" is
    passthrough, "DMA"/"DMA-FQ" translate). With IOMMU units present and nothing saying
    passthrough, the kernel default (DMA translation) is assumed.
    """
    flags = _cmdline_flags(cmdline)
    if iommu_dirs is not None and not iommu_dirs:
        return "off"
    if group_types:
        identity = sum(1 for t in group_types if t.strip().lower() == "identity")
        return "passthrough" if identity * 2 > len(group_types) else "translated"
    if flags & _PASSTHROUGH_FLAGS:
        return "passthrough"
    if flags & _TRANSLATED_FLAGS:
        return "translated"
    if iommu_dirs:
        return "translated"
    if flags & _OFF_FLAGS:
        return "off"
    return "unknown"


def read_iommu(root: Path = Path("/")) -> str:
    """Read /proc/cmdline, /sys/class/iommu and the IOMMU group types, then `parse_iommu`."""
    try:
        cmdline = (root / "proc/cmdline").read_text(errors="replace")
    except OSError:
        cmdline = ""
    try:
        dirs: list[str] | None = sorted(os.listdir(root / "sys/class/iommu"))
    except OSError:
        dirs = None
    types: list[str] = []
    groups = root / "sys/kernel/iommu_groups"
    try:
        for group in groups.iterdir():
            try:
                types.append((group / "type").read_text())
            except OSError:
                continue
    except OSError:
        pass
    return parse_iommu(cmdline, dirs, types or None)


def nearest_existing(path: Path) -> Path:
    """The path itself or its nearest existing ancestor (a workdir may not exist yet)."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def disk_free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged user may still write on the filesystem holding `path`."""
    try:
        st = os.statvfs(nearest_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def shm_bytes(path: Path = Path("/dev/shm")) -> tuple[int | None, int | None]:
    """(size, free) of /dev/shm; (None, None) when there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def cpu_count() -> int | None:
    """CPUs this process may use (cgroup/affinity aware), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def os_name() -> str:
    try:
        release = platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME") or platform.system()
    except OSError:
        return f"{platform.system()} {platform.release()}".strip()


def hf_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub caches downloads (same precedence as its constants, without importing it)."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


def tree_bytes(path: Path) -> int:
    """Bytes used by the regular files under `path` (symlinks not followed); 0 when absent."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def nvidia_pci_gpus(root: Path = Path("/sys/bus/pci/devices")) -> int | None:
    """NVIDIA display/3D controllers on the PCI bus (sysfs, no driver needed); None when unreadable.

    Tells a GPU box whose driver is missing from a machine without GPUs.
    """
    try:
        devices = list(root.iterdir())
    except OSError:
        return None
    count = 0
    for device in devices:
        try:
            vendor = (device / "vendor").read_text().strip().lower()
            klass = (device / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == "0x10de" and klass.startswith(("0x0300", "0x0302")):
            count += 1
    return count


def probe_host(workdir: Path, models_dir: Path, venv_dir: Path, toolkit_dir: Path,
               env: Mapping[str, str]) -> dict[str, Any]:
    """The `host` section of the snapshot."""
    shm_size, shm_free = shm_bytes()
    hf_cache = hf_cache_dir(env)
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "cpu_count": cpu_count(),
        "ram_bytes": ram_bytes(),
        "shm_bytes": shm_size,
        "shm_free_bytes": shm_free,
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iommu": read_iommu(),
        "nvidia_pci_gpus": nvidia_pci_gpus(),
        "workdir": str(workdir),
        "hf_cache": str(hf_cache),
        "disk_free_bytes": {str(workdir): disk_free_bytes(workdir), str(hf_cache): disk_free_bytes(hf_cache)},
        "same_filesystem": _same_filesystem(workdir, hf_cache),
        "workdir_contents": {
            "models_bytes": tree_bytes(models_dir),
            "venv": (venv_dir / "bin" / "python").exists(),
            "toolkit": toolkit_dir.is_dir() and any(toolkit_dir.iterdir()),
        },
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
    }


def _same_filesystem(a: Path, b: Path) -> bool | None:
    try:
        return os.stat(nearest_existing(a)).st_dev == os.stat(nearest_existing(b)).st_dev
    except OSError:
        return None
