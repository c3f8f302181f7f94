"""The docs tests' Markdown reader (tests/markdown.py): blocks, markers, anchors, links."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.markdown import FRAGMENT, RUN, Block, parse, slug


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_a_block_has_its_language_text_line_marker_and_heading_anchor() -> None:
    parsed = parse(
        doc(
            """
            # Title

            ## From a backend service

            <!-- sample: run -->
            ```python
            import streamfan
            print(1)
            ```
            """
        )
    )
    assert parsed.blocks == (
        Block("python", "import streamfan\nprint(1)\n", 6, RUN, "from-a-backend-service"),
    )


def test_an_unmarked_block_and_one_before_any_heading_are_read_too() -> None:
    parsed = parse("```\nraw\n```\n# After\n~~~bash\nls\n~~~\n")
    assert [(b.language, b.marker, b.anchor, b.line) for b in parsed.blocks] == [
        ("", None, "", 1),
        ("bash", None, "after", 5),
    ]


@pytest.mark.parametrize(
    ("info", "language"),
    [("python", "python"), ("Python title=x.py", "python"), ("{.bash}", "bash"), ("", "")],
)
def test_the_language_is_the_info_strings_first_word_in_lower_case(
    info: str, language: str
) -> None:
    assert parse(f"```{info}\nx\n```\n").blocks[0].language == language


def test_a_marker_counts_only_on_the_line_right_before_the_fence() -> None:
    parsed = parse(
        doc(
            """
            <!-- sample: fragment -->

            ```python
            x
            ```
            <!-- sample: run -->
            text
            <!-- sample: run -->
            """
        )
    )
    assert parsed.blocks[0].marker is None
    assert parsed.stray_markers == (1, 6, 8)


def test_a_marker_with_an_unknown_kind_is_kept_as_written() -> None:
    parsed = parse("<!--sample:runn-->\n```python\nx\n```\n")
    assert parsed.blocks[0].marker == "runn"
    assert parse("<!-- sample: run gateway -->\n```\nx\n```\n").blocks[0].marker == "run gateway"
    assert parse("<!-- sample: fragment -->\n```\nx\n```\n").blocks[0].marker == FRAGMENT


def test_a_fence_inside_a_list_item_loses_its_indentation_and_keeps_its_marker() -> None:
    parsed = parse("- item:\n\n  <!-- sample: run -->\n  ```bash\n  echo a\n    echo b\n  ```\n")
    assert parsed.blocks == (Block("bash", "echo a\n  echo b\n", 4, RUN, ""),)


def test_a_longer_fence_holds_a_shorter_one_and_headings_inside_are_not_headings() -> None:
    parsed = parse("````markdown\n```python\n# not a heading\n```\n````\n# Real\n")
    assert len(parsed.blocks) == 1
    assert parsed.blocks[0].text == "```python\n# not a heading\n```\n"
    assert parsed.anchors == ("real",)


def test_a_tilde_fence_is_not_closed_by_backticks() -> None:
    parsed = parse("~~~\n```\n~~~\n")
    assert parsed.blocks[0].text == "```\n"


def test_an_unclosed_fence_runs_to_the_end_and_is_reported() -> None:
    parsed = parse("# A\n```python\nx = 1\n")
    assert parsed.blocks[0].text == "x = 1\n"
    assert parsed.unclosed == (2,)


def test_backticks_in_a_backtick_info_string_make_no_fence() -> None:
    assert parse("```a`b\nx\n```\n").blocks[0].line == 3  # the last line opens one


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("From a backend service", "from-a-backend-service"),
        ("Answers and `reply_to`", "answers-and-reply_to"),
        ("Client → gateway", "client--gateway"),
        ("Authorisation, at the handshake", "authorisation-at-the-handshake"),
        ("Error codes in `error` events", "error-codes-in-error-events"),
        ("Attempts, retries, leases", "attempts-retries-leases"),
        ("See [the docs](docs/x.md) now", "see-the-docs-now"),
        ("Ünïcode 2.0!", "ünïcode-20"),
    ],
)
def test_anchors_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
    assert parse(f"## {heading}\n").anchors == (anchor,)


def test_repeated_headings_get_numbered_anchors_and_closing_hashes_are_dropped() -> None:
    parsed = parse("# Setup\n## Setup ##\n### Setup\n#nope\n####### seven\n")
    assert parsed.anchors == ("setup", "setup-1", "setup-2")


def test_links_images_and_definitions_are_found_outside_code() -> None:
    parsed = parse(
        doc(
            """
            See [events](events.md#keys) and ![plot](img/a.svg "A plot").
            `[not](a-link.md)` and [web](https://example.com).
            [ref]: ../CHANGELOG.md
            ```
            [inside](a-block.md)
            ```
            """
        )
    )
    assert [(link.target, link.line) for link in parsed.links] == [
        ("events.md#keys", 1),
        ("img/a.svg", 1),
        ("https://example.com", 2),
        ("../CHANGELOG.md", 3),
    ]


def test_a_link_target_in_angle_brackets_loses_them() -> None:
    assert parse("[a](<b.md>)\n").links[0].target == "b.md"


_LINE = st.text(alphabet=st.sampled_from("ab #`~-<>!:[]()\t"), max_size=12)


@given(st.lists(_LINE, max_size=12))
def test_any_text_parses_and_every_block_line_points_at_an_opening_fence(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    parsed = parse(text)
    source = text.splitlines()
    for block in parsed.blocks:
        assert source[block.line - 1].lstrip(" \t")[:3] in ("```", "~~~")
    for number in parsed.stray_markers + parsed.unclosed:
        assert 1 <= number <= len(source)
