"""The gateway's request-target split: urlsplit's answers, without urlsplit's cache."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.auth import split_target

CHARS = st.sampled_from(list("/abc0-9_%?#=&.$"))


@given(st.lists(CHARS, max_size=40).map(lambda cs: "/" + "".join(cs)))
def test_path_and_query_are_urlsplits(target: str) -> None:
    # "//host/..." is an authority to urlsplit; in a request line it is a path,
    # and neither reading makes it a WebSocket path.
    assume(not target.startswith("//"))
    url = urlsplit(target)
    assert split_target(target) == (url.path, url.query)


def test_a_stream_target() -> None:
    assert split_target("/streams/abc?from=0&token=x") == ("/streams/abc", "from=0&token=x")
    assert split_target("/ws") == ("/ws", "")
