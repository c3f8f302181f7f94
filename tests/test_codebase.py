"""The codebase itself: lint, format, types and the public surface, as CI checks them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import streamfan

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_no_lint_errors() -> None:
    proc = _run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_leaves_every_file_unchanged() -> None:
    proc = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_the_packages() -> None:
    proc = _run(str(BIN / "mypy"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_public_api_is_sorted_and_importable() -> None:
    assert streamfan.__all__ == sorted(streamfan.__all__)
    for name in streamfan.__all__:
        assert getattr(streamfan, name) is not None
