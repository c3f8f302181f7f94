"""The packages' layout: who may import whom, and how big a module may grow.

``streamfan`` is the contract a backend imports: it reaches into no other package
and runs no process. ``cli`` sits above ``worker`` and ``gateway`` and nothing
imports it. The mock upstream lives in ``streamfan.mock`` and nothing else in
``streamfan`` loads it. Read from the source (every ``import`` statement, those
inside functions too), so a lazy import counts like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamfan", "worker", "gateway", "cli", "bench", "chaos")
#: Modules grow past this only by holding two things: split them by what they hold.
MAX_LINES = 400


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    """Every module name ``path`` imports (absolute; relative imports resolved)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                yield ".".join([*base, *([node.module] if node.module else [])])
            else:
                assert node.module is not None
                yield node.module


def importers(packages: tuple[str, ...], target: str) -> list[str]:
    """``file: module`` for every import of ``target`` (or its submodules) in ``packages``."""
    return [
        f"{path.relative_to(ROOT)}: {name}"
        for package in packages
        for path in modules(package)
        for name in imported(path)
        if name == target or name.startswith(target + ".")
    ]


@pytest.mark.parametrize("target", ["cli", "worker", "gateway", "bench", "chaos"])
def test_the_contract_package_imports_no_other_package(target: str) -> None:
    assert importers(("streamfan",), target) == []


@pytest.mark.parametrize("package", ["worker", "gateway"])
def test_worker_and_gateway_do_not_import_the_command_package(package: str) -> None:
    assert importers((package,), "cli") == []


def test_the_contract_modules_never_load_the_mock() -> None:
    found = importers(("streamfan",), "streamfan.mock")
    assert [f for f in found if not f.startswith("streamfan/mock/")] == []


@pytest.mark.parametrize("module", ["argparse", "signal", "subprocess"])
def test_the_contract_package_starts_and_signals_no_process(module: str) -> None:
    assert importers(("streamfan",), module) == []


def test_no_module_of_the_packages_is_over_the_line_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in modules(package)
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("package", ["streamfan", "worker", "gateway", "cli", "bench"])
def test_nothing_but_the_tests_imports_the_chaos_run(package: str) -> None:
    assert importers((package,), "chaos") == []
