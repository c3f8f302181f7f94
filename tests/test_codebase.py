"""The codebase itself: lint, format, types and the public surface, as CI checks them."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import streamfan
import streamfan.errors

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


def test_every_exception_in_the_tree_is_exported() -> None:
    tree = {
        name
        for name, obj in vars(streamfan.errors).items()
        if inspect.isclass(obj) and issubclass(obj, streamfan.errors.StreamfanError)
    }
    assert tree - set(streamfan.__all__) == set()


def test_the_client_and_what_it_returns_are_exported() -> None:
    from streamfan.client import Client, Result, Submission

    assert (streamfan.Client, streamfan.Result, streamfan.Submission) == (
        Client,
        Result,
        Submission,
    )
    assert {"Client", "Result", "Settings", "Submission"} <= set(streamfan.__all__)
    assert set(streamfan.__all__) <= set(dir(streamfan))


def test_a_name_streamfan_does_not_have_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        streamfan.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_streamfan_does_not_import_redis_or_arq() -> None:
    # The worker, the gateway and the mock upstream import streamfan's pure modules;
    # the client's redis-py and arq (~0.1 s) load only when streamfan.Client is used.
    code = "import sys, streamfan; print(sorted({'redis', 'arq'} & set(sys.modules)))"
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
