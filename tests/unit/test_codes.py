"""One table of ``error``-event codes: the code and docs/events.md take them from it."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from streamfan import codes, errors

ROOT = Path(__file__).resolve().parents[2]
#: Where a code may not be spelled: everything shipped, but the table itself.
SEARCHED = ("streamfan", "worker", "gateway", "cli")
OWNER = ROOT / "streamfan" / "codes.py"
START, END = "<!-- error-codes:start -->", "<!-- error-codes:end -->"


def spelled_codes(text: str) -> set[str]:
    """The codes of the table that ``text`` spells as a quoted string."""
    quoted = set(re.findall(r"""["']([a-z_]+)["']""", text))
    return quoted & set(codes.TABLE)


def shipped_files() -> list[Path]:
    return sorted(
        path
        for package in SEARCHED
        for pattern in ("*.py", "*.js")
        for path in (ROOT / package).rglob(pattern)
        if path != OWNER
    )


def upstream_classes() -> dict[str, str]:
    """code -> name of the exception class that carries it by default."""
    return {
        cls.code: name
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.UpstreamError)
    }


def test_docs_events_md_holds_the_generated_table() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    assert START in text and END in text
    documented = text.split(START)[1].split(END)[0].strip()
    # To regenerate: python -c "from streamfan.codes import markdown_table as t; print(t())"
    assert documented == codes.markdown_table()


def test_upstream_request_failed_is_documented() -> None:
    assert "`upstream_request_failed`" in codes.markdown_table()


def test_no_code_is_spelled_outside_the_table() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in shipped_files()
        if (hits := spelled_codes(path.read_text()))
    }
    assert found == {}, "use streamfan.codes.<NAME>.code instead"


def test_the_check_catches_an_inline_code() -> None:
    assert spelled_codes('events.error("timeout", "slow", retryable=False)') == {"timeout"}
    assert spelled_codes("code='upstream_unreachable'") == {"upstream_unreachable"}
    assert spelled_codes("codes.TIMEOUT.code") == set()


def literal_codes(source: str) -> list[str]:
    """Codes written as string literals where an ``error`` event's code goes: the
    first argument of ``error(...)`` / ``events.error(...)``, a ``code=`` keyword,
    a class's ``code = ...`` — so a code missing from the table is caught too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        values: list[ast.expr] = []
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("error", "events.error") and node.args:
                values.append(node.args[0])
            values += [k.value for k in node.keywords if k.arg == "code"]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "code" for t in node.targets
        ):
            values.append(node.value)
        found += [v.value for v in values if isinstance(v, ast.Constant)]
    return [v for v in found if isinstance(v, str)]


def test_no_error_event_code_is_a_literal_even_one_missing_from_the_table() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in shipped_files()
        if path.suffix == ".py" and (hits := literal_codes(path.read_text()))
    }
    assert found == {}, "add the code to streamfan/codes.py and use it from there"


def test_the_literal_check_catches_a_new_code() -> None:
    assert literal_codes('events.error("orphaned", "m", retryable=False)') == ["orphaned"]
    assert literal_codes('UpstreamError("m", code="upstream_new")') == ["upstream_new"]
    assert literal_codes('class E:\n    code = "e_code"') == ["e_code"]
    assert literal_codes("events.error(codes.TIMEOUT.code, 'm', retryable=False)") == []


def test_every_exception_code_is_in_the_table() -> None:
    assert set(upstream_classes()) <= set(codes.TABLE)


def test_each_code_is_raised_where_the_table_says() -> None:
    names = {c.code: n for n, c in vars(codes).items() if isinstance(c, codes.ErrorCode)}
    classes = upstream_classes()
    for code in codes.TABLE.values():
        assert code.raised_in, code.code
        for where in code.raised_in:
            text = (ROOT / where).read_text()
            by_class = code.code in classes and f"{classes[code.code]}(" in text
            assert f"codes.{names[code.code]}" in text or by_class, (code.code, where)


def test_retryable_defaults_from_the_table() -> None:
    assert errors.UpstreamStalled("x").retryable is True
    assert errors.UpstreamStreamError("x").retryable is False
    unreachable = errors.UpstreamError("x", code=codes.UPSTREAM_UNREACHABLE.code)
    assert unreachable.retryable is True
    assert errors.UpstreamHTTPError("x", retryable=True).retryable is True
