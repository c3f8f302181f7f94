"""The Lua scripts and Python agree on every key suffix, field, status and reply tag.

The scripts get these from :data:`streamfan.scripts.PRELUDE`, generated from the
Python constants; these tests fail when a script spells one by hand again (so a
rename in Python would leave the Lua behind), uses a constant the prelude does
not define, or when the prelude says something Python does not.
"""

from __future__ import annotations

import re

import pytest
import redis.asyncio

from streamfan import events, orphans, scripts
from streamfan.keys import EVENT_FIELD, Keys, Meta
from streamfan.positions import ZERO_RAW

SCRIPTS = {
    name: value
    for module in (scripts, orphans)
    for name, value in vars(module).items()
    if name.isupper()
    and not name.startswith("_")
    and isinstance(value, str)
    and "redis.call" in value
}
#: Suffixes of a stream's keys, as :class:`Keys` builds them.
SUFFIXES = {
    getattr(Keys("p"), kind)("s").removeprefix(Keys("p").base("s"))
    for kind in ("meta", "events", "live", "lease")
}
META_FIELDS = {value for name, value in vars(Meta).items() if name.isupper()}
REPLY_TAGS = {value for name, value in vars(scripts.Reply).items() if name.isupper()}
#: Every value a script must take from the prelude instead of spelling it.
FACTS = SUFFIXES | META_FIELDS | events.STATUSES | REPLY_TAGS | {EVENT_FIELD, ZERO_RAW.decode()}

_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_COMMENT = re.compile(r"--[^\n]*")
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9_]*\b")
_LOCAL = re.compile(r"^local (\w+) = (.*)$", re.MULTILINE)


def body(script: str) -> str:
    """A script without its prelude and its comments."""
    assert script.startswith(scripts.PRELUDE)
    return _COMMENT.sub("", script.removeprefix(scripts.PRELUDE))


def spelled_facts(lua: str) -> set[str]:
    """Quoted literals in ``lua`` that are, or contain, a fact of :data:`FACTS`."""
    found = set()
    for match in _STRING.finditer(lua):
        literal = match.group(1) if match.group(1) is not None else match.group(2)
        if literal in FACTS or any(suffix in literal for suffix in SUFFIXES):
            found.add(literal)
    return found


def prelude_names() -> set[str]:
    return {name for name, _value in _LOCAL.findall(scripts.PRELUDE)}


def test_the_script_list_is_complete() -> None:
    expected = {"CREATE", "CANCEL", "BEGIN", "APPEND", "APPEND_MANY", "RENEW", "READ_PAGE"}
    expected |= {"ORPHAN", "CLAIM_DUE"}  # streamfan/orphans.py
    assert set(SCRIPTS) == expected


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_spells_a_suffix_field_status_or_reply_tag(name: str) -> None:
    assert spelled_facts(body(SCRIPTS[name])) == set()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_constant_a_script_uses_is_generated(name: str) -> None:
    # Strings removed first: 'XADD' and friends are Redis's words, not ours. An
    # undefined upper-case name would be a nil global in Lua (an error in Redis).
    used = set(_CONSTANT.findall(_STRING.sub("", body(SCRIPTS[name])))) - {"KEYS", "ARGV"}
    assert used - prelude_names() == set()


def test_the_checks_catch_a_hand_spelled_fact() -> None:
    assert spelled_facts("redis.call('HGET', meta, 'last_id') or '0-0'") == {"last_id", "0-0"}
    assert spelled_facts('local k = base .. ":live"') == {":live"}
    assert spelled_facts("return {'running'}") == {"running"}
    assert spelled_facts("redis.call('XADD', k, '*', EVENT_FIELD, v)") == set()


def test_the_prelude_says_what_python_says() -> None:
    values = {name: raw.strip("'") for name, raw in _LOCAL.findall(scripts.PRELUDE)}
    finished = values.pop("FINISHED")
    assert values == scripts.CONSTANTS
    # Every fact a script could need has a constant, with Python's value.
    assert FACTS - {":lease"} <= set(scripts.CONSTANTS.values())
    assert scripts.CONSTANTS["EVENT_FIELD"] == EVENT_FIELD
    assert scripts.CONSTANTS["ZERO_ID"] == ZERO_RAW.decode()
    assert scripts.CONSTANTS["M_LAST_ID"] == Meta.LAST_ID
    keys = Keys("p")
    for kind in ("meta", "events", "live"):
        suffix = scripts.CONSTANTS[f"{kind.upper()}_SUFFIX"]
        assert keys.base("s") + suffix == getattr(keys, kind)("s")
    named = set(re.findall(r"\[S_(\w+)\] = true", finished))
    assert {scripts.CONSTANTS[f"S_{n}"] for n in named} == events.FINISHED_STATUSES


async def test_the_prelude_runs_in_redis_and_gives_back_the_python_values(
    aredis: redis.asyncio.Redis,
) -> None:
    names = list(scripts.CONSTANTS)
    lua = scripts.PRELUDE + "return {" + ", ".join(names) + "}"
    got = await aredis.eval(lua, 0)  # type: ignore[misc]
    assert [v.decode() for v in got] == [scripts.CONSTANTS[n] for n in names]
    for name in sorted(SCRIPTS):
        # Each script compiles (SCRIPT LOAD parses without running it).
        assert await aredis.script_load(SCRIPTS[name])
