"""Facts said once: the gateway's default port, and docs that cite files which exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from streamfan.settings import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
TEXT = (".py", ".md", ".js", ".html", ".toml", ".cfg", ".txt")
#: Where the port may be written: its definition, the generated settings table,
#: and the deploy files, which pin the port of their own containers (EXPOSE,
#: containerPort, the proxy's upstream) rather than restating a default.
PORT_ALLOWED = {"streamfan/settings.py", "docs/operations.md"}
PORT_ALLOWED_DIRS = ("deploy/", "tests/", "bench/results/")
#: The history may name files that since moved or went away; tests name made-up
#: ones in examples. (tests/unit/test_docs_references.py checks links and
#: anchors; this catches a bare mention too, like a "design.md" outside the repo.)
REFS_EXEMPT = {"CHANGELOG.md"}


def tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(p for p in out.splitlines() if p.endswith(TEXT) and (ROOT / p).is_file())


def test_the_gateway_port_is_written_only_where_it_is_defined() -> None:
    number = re.compile(rf"(?<![\d.]){DEFAULT_PORT}(?![\d.])")
    found = [
        path
        for path in tracked()
        if path not in PORT_ALLOWED
        and not path.startswith(PORT_ALLOWED_DIRS)
        and number.search((ROOT / path).read_text())
    ]
    assert found == [], f"say STREAMFAN_PORT / settings.DEFAULT_PORT instead of {DEFAULT_PORT}"
    table = (ROOT / "docs/operations.md").read_text()
    assert len(number.findall(table)) == 1  # the generated settings table's row


def cited(text: str) -> set[str]:
    """Markdown files ``text`` names: ``docs/x.md``, ``x.md``, ``](x.md#part)``."""
    return set(re.findall(r"(?<![\w/.-])((?:\.\./)*[\w./-]*[\w-]+\.md)\b", text))


def resolves(citing: str, ref: str) -> bool:
    """Whether ``ref`` names a file of the repository (a clone has nothing outside it)."""
    here = (ROOT / citing).parent
    targets = [(base / ref).resolve() for base in (here, ROOT, ROOT / "docs")]
    return any(t.is_file() and t.is_relative_to(ROOT) for t in targets)


def test_every_markdown_file_cited_exists() -> None:
    dangling = {
        f"{path}: {ref}"
        for path in tracked()
        if path not in REFS_EXEMPT and not path.startswith("tests/")
        for ref in cited((ROOT / path).read_text())
        if not resolves(path, ref)
    }
    assert dangling == set()


def test_the_reference_check_finds_a_dangling_one() -> None:
    assert cited("see docs/worker.md, and [x](protocol.md#close-codes)") == {
        "docs/worker.md",
        "protocol.md",
    }
    assert not resolves("streamfan/serialization.py", "docs/worker.md")
    assert resolves("docs/events.md", "protocol.md")
    assert not resolves("docs/events.md", "../shared/design.md")
