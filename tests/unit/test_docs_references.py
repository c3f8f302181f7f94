"""The docs point at things that exist: markers, links, anchors, files, exported names.

Every fenced block of the docs carries a sample marker (docs/contributing.md), so
none is silently left out of ``tests/integration/test_docs_samples.py``; every
relative link and ``#anchor`` resolves; every ``docs/…`` path the code cites
exists; every ``streamfan.Name`` the docs use is something ``import streamfan``
gives.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

import streamfan
from tests.markdown import DOC_FILES, KINDS, RUN, RUNNABLE, Document, parse

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(p for pattern in DOC_FILES for p in ROOT.glob(pattern))
#: The changelog is history: the files and names it mentions may be gone since.
CURRENT = [p for p in DOCS if p.name != "CHANGELOG.md"]
#: Where the code and its configuration live (tests hold made-up paths in examples).
SOURCES = ("streamfan", "worker", "gateway", "cli", "bench", "deploy", ".ci", "pyproject.toml")
SOURCE_SUFFIXES = {".py", ".js", ".html", ".toml", ".yaml", ".yml", ".json", ".sh", ""}

_DOCS_PATH = re.compile(r"\bdocs/[\w-]+(?:/[\w-]+)*\.\w+(?:#[\w-]+)?")
# Not preceded by a path or a word: "gateway/static/streamfan.js" is a file.
_NAME = re.compile(r"(?<![\w/.-])streamfan\.(?P<path>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _parsed(path: Path) -> Document:
    return parse(path.read_text())


def _anchors(path: Path) -> set[str]:
    return set(_parsed(path).anchors) if path.suffix == ".md" else set()


def test_the_docs_are_found() -> None:
    assert {"README.md", "docs/protocol.md"} <= {_name(p) for p in DOCS}


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_every_fenced_block_carries_a_known_sample_marker(path: Path) -> None:
    parsed = _parsed(path)
    unmarked = [
        f"line {b.line} ({b.language or 'no language'})" for b in parsed.blocks if b.marker is None
    ]
    unknown = [
        f"line {b.line}: {b.marker!r}" for b in parsed.blocks if b.marker not in (*KINDS, None)
    ]
    assert unmarked == [], f"add <!-- sample: run --> or <!-- sample: fragment -->: {unmarked}"
    assert unknown == [], f"the kinds are {KINDS}"
    assert parsed.stray_markers == (), "a marker must be the line right before a fence"
    assert parsed.unclosed == (), "a fence is never closed"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_every_run_block_is_in_a_language_the_sample_runner_runs(path: Path) -> None:
    for block in _parsed(path).blocks:
        if block.marker == RUN:
            assert block.language in RUNNABLE, f"line {block.line}: {block.language!r}"
            if block.language == "python":
                compile(block.text, f"{_name(path)}:{block.line}", "exec")


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    broken = []
    for link in _parsed(path).links:
        parts = urlsplit(link.target)
        if parts.scheme or parts.netloc:
            continue  # the web is not ours to check offline
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if not target.is_relative_to(ROOT) or not target.exists():
            broken.append(f"line {link.line}: {link.target} (no such file in the repo)")
        elif parts.fragment and parts.fragment not in _anchors(target):
            broken.append(f"line {link.line}: {link.target} (no heading #{parts.fragment})")
    assert broken == []


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SOURCE_SUFFIXES]
    return files


def test_every_docs_path_cited_in_the_code_exists() -> None:
    files = _source_files()
    assert any(p.name == "protocol.py" for p in files)
    missing = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for cited in _DOCS_PATH.findall(text):
            file, _, anchor = cited.partition("#")
            target = ROOT / file
            if not target.exists() or (anchor and anchor not in _anchors(target)):
                missing.append(f"{_name(path)}: {cited}")
    assert missing == []


@pytest.mark.parametrize("path", CURRENT, ids=_name)
def test_every_docs_path_cited_in_the_docs_exists(path: Path) -> None:
    missing = [
        c for c in _DOCS_PATH.findall(path.read_text()) if not (ROOT / c.partition("#")[0]).exists()
    ]
    assert missing == []


def _files_named_streamfan() -> set[str]:
    return {
        p.name.removeprefix("streamfan.")
        for name in SOURCES
        if (ROOT / name).is_dir()
        for p in (ROOT / name).rglob("streamfan.*")
    }


def _resolve(dotted: str) -> object:
    """What ``streamfan.<dotted>`` names: a submodule's attribute, or an exported name."""
    first, *rest = dotted.split(".")
    obj: object
    if importlib.util.find_spec(f"streamfan.{first}") is not None:
        obj = importlib.import_module(f"streamfan.{first}")
    elif first.startswith("__"):
        obj = getattr(streamfan, first)  # the module's own: __all__, __version__
    else:
        assert first in streamfan.__all__, f"streamfan.{first} is not in streamfan.__all__"
        obj = getattr(streamfan, first)
    for part in rest:
        if (
            isinstance(obj, ModuleType)
            and hasattr(obj, "__path__")  # a package: its submodules are names too
            and importlib.util.find_spec(f"{obj.__name__}.{part}") is not None
        ):
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        else:
            assert hasattr(obj, part), f"streamfan.{dotted}: {obj!r} has no {part!r}"
            obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", CURRENT, ids=_name)
def test_every_streamfan_name_the_docs_use_exists(path: Path) -> None:
    files = _files_named_streamfan()
    for dotted in sorted(set(_NAME.findall(path.read_text()))):
        if dotted not in files:
            _resolve(dotted)


def test_a_name_the_package_does_not_export_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"not in streamfan\.__all__"):
        _resolve("Nope")
    with pytest.raises(AssertionError, match="has no 'nope'"):
        _resolve("Client.nope")
    assert _resolve("Client.from_url") == streamfan.Client.from_url
    assert _resolve("__all__") is streamfan.__all__
    assert _NAME.findall("`gateway/static/streamfan.js`, streamfan.Client.") == ["Client"]
