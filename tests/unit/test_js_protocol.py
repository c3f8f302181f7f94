"""streamfan.js and streamfan/protocol.py agree on close codes and error codes.

The browser client cannot import Python, so it holds its own copy of the
constants; this reads them from the source and compares. (The browser test
``test_the_reconnect_decision_is_protocol_py_s_for_every_close_code`` runs the
JS decision itself against :func:`streamfan.protocol.should_reconnect`.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamfan import protocol

JS = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "streamfan.js").read_text()


def js_constant(name: str) -> str:
    match = re.search(rf"const {name} = (.*?);\n", JS, re.DOTALL)
    assert match is not None, f"streamfan.js defines no {name}"
    return match.group(1)


def js_list(name: str) -> list[object]:
    text = js_constant(name)
    text = text.removeprefix("new Set(").removeprefix("Object.freeze(").rstrip(")")
    # A JS array literal of numbers or strings is JSON but for trailing commas.
    return list(json.loads(re.sub(r",\s*]", "]", text)))


def test_the_terminal_close_codes_are_protocol_py_s() -> None:
    assert set(js_list("TERMINAL_CLOSE_CODES")) == protocol.TERMINAL_STANDARD_CLOSE_CODES


def test_the_close_code_ranges_are_protocol_py_s() -> None:
    assert tuple(js_list("RECONNECT_CLOSE_RANGE")) == protocol.RECONNECT_CLOSE_RANGE
    assert tuple(js_list("TERMINAL_CLOSE_RANGE")) == protocol.TERMINAL_CLOSE_RANGE


def test_should_reconnect_decides_from_the_constants_alone() -> None:
    match = re.search(r"function shouldReconnect\(code\) \{(.*?)\n  \}", JS, re.DOTALL)
    assert match is not None
    # A number written into the function would be a fact the comparison misses.
    assert re.findall(r"\b\d+\b", match.group(1).replace("[0]", "").replace("[1]", "")) == []


def test_every_close_code_the_gateway_sends_is_grouped_the_same_way() -> None:
    terminal = set(js_list("TERMINAL_CLOSE_CODES"))
    lo, hi = js_list("TERMINAL_CLOSE_RANGE")
    for code in protocol.CloseCode:
        assert isinstance(lo, int) and isinstance(hi, int)
        js_terminal = code in terminal or lo <= code <= hi
        assert code.reconnect is not js_terminal, code


def test_the_error_codes_are_protocol_py_s() -> None:
    assert set(js_list("ERROR_CODES")) == protocol.ERROR_CODES
