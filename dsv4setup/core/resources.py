"""Where shipped data lives: `profiles/` and `patches/` at the checkout root (editable install)
or `dsv4setup/_data/<name>` inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """`profiles` or `patches`: the shipped data directory of that name."""
    for candidate in (PACKAGE_DIR / "_data" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dsv4setup data directory {name!r} not found (broken install?)")


def package_file(*parts: str) -> Path:
    """A file shipped inside the package (schemas, known_failures.yaml, ...)."""
    return PACKAGE_DIR.joinpath(*parts)
