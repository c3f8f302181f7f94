"""The Markdown of README.md and docs/*.md, as far as the docs tests read it.

Pure: text in, a :class:`Document` out — fenced code blocks (language, sample
marker, the anchor of the heading they sit under, line), heading anchors and
link targets. No file is opened here; ``tests/unit/test_docs_references.py`` and
``tests/integration/test_docs_samples.py`` read the files and judge.

The sample marker is an HTML comment on the line right before a block's opening
fence (GitHub renders nothing for it)::

    <!-- sample: run -->         the block runs as written; the suite runs it
    <!-- sample: fragment -->    deliberately partial, or not runnable here

The subset of CommonMark understood, which is what our docs use: fences of three
or more backticks or tildes, at any indentation (inside list items too), closed
by a fence of the same character at least as long; ATX headings (``#`` …
``######``) outside fences; inline links and images ``[text](target "title")``
and reference definitions ``[ref]: target``, outside fences and code spans.
Anchors follow GitHub: lower case, every character but letters, digits, ``_``,
``-`` and spaces dropped, each space a hyphen, and ``-1``, ``-2``… appended to
repeats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The files whose blocks carry markers and whose links must resolve (globs from the root).
DOC_FILES = ("README.md", "CHANGELOG.md", "docs/*.md")

#: The kinds a sample marker may name. A marker with another kind is kept as
#: written (so a test can report the typo), never silently read as one of these.
RUN = "run"
FRAGMENT = "fragment"
KINDS = (RUN, FRAGMENT)
#: The languages a ``run`` block may be in: what the sample runner knows how to run.
RUNNABLE = ("python", "bash")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^[ \t]*<!--\s*sample:\s*(?P<kind>.*?)\s*-->[ \t]*$")
_HEADING = re.compile(r"^ {0,3}(?P<level>#{1,6})(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(?P<target>[^\s>]+)>?")
_INLINE_LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_NOT_IN_ANCHOR = re.compile(r"[^\w\- ]")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block."""

    #: The info string's first word, lower case ("" for none): "python", "bash"…
    language: str
    #: The block's lines between the fences, with the fence's indentation removed.
    text: str
    #: 1-based line of the opening fence.
    line: int
    #: The marker's kind (see :data:`KINDS`, or whatever a typo says); None if unmarked.
    marker: str | None
    #: The anchor of the nearest heading above the block ("" before the first one).
    anchor: str


@dataclass(frozen=True, slots=True)
class Link:
    target: str
    line: int


@dataclass(frozen=True, slots=True)
class Document:
    blocks: tuple[Block, ...]
    #: Every heading's anchor, in order.
    anchors: tuple[str, ...]
    links: tuple[Link, ...]
    #: Lines of markers that are not right before an opening fence.
    stray_markers: tuple[int, ...]
    #: Lines of opening fences that are never closed.
    unclosed: tuple[int, ...]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text, before repeats are numbered."""
    text = _INLINE_LINK_TEXT.sub(r"\1", heading.strip())
    return _NOT_IN_ANCHOR.sub("", text.lower()).replace(" ", "-")


def _language(info: str) -> str:
    words = info.strip().split()
    return words[0].strip("{}.").lower() if words else ""


def _dedent(line: str, indent: int) -> str:
    """``line`` without up to ``indent`` leading spaces (a fence's own indentation)."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent) :]


def parse(text: str) -> Document:
    lines = text.splitlines()
    blocks: list[Block] = []
    anchors: list[str] = []
    seen: dict[str, int] = {}
    links: list[Link] = []
    stray: list[int] = []
    unclosed: list[int] = []
    anchor = ""
    pending: tuple[int, str] | None = None  # (line, kind) of a marker awaiting its fence
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        opening = _FENCE.match(line)
        # A backtick fence's info string may not hold a backtick (CommonMark 4.5).
        if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
            indent, fence = len(opening["indent"]), opening["fence"]
            closing = re.compile(
                r"^[ \t]*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$"
            )
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not closing.match(lines[j]):
                body.append(_dedent(lines[j], indent))
                j += 1
            if j == len(lines):
                unclosed.append(number)
            marker = pending[1] if pending is not None and pending[0] == number - 1 else None
            if pending is not None and marker is None:
                stray.append(pending[0])
            pending = None
            blocks.append(
                Block(_language(opening["info"]), "\n".join(body) + "\n", number, marker, anchor)
            )
            i = j + 1
            continue
        if pending is not None:
            stray.append(pending[0])
            pending = None
        if m := _MARKER.match(line):
            pending = (number, m["kind"])
        elif h := _HEADING.match(line):
            base = slug(h["text"] or "")
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchor = base if count == 0 else f"{base}-{count}"
            anchors.append(anchor)
        if d := _DEFINITION.match(line):
            links.append(Link(d["target"], number))
        else:
            for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
                links.append(Link(m["target"], number))
        i += 1
    if pending is not None:
        stray.append(pending[0])
    return Document(tuple(blocks), tuple(anchors), tuple(links), tuple(stray), tuple(unclosed))
