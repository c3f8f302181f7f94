"""Fixtures of the mock upstream's tests: a server on a free port and an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from streamfan.mock.server import MockUpstream

from .support import AUTH


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as server:
        yield server


@pytest.fixture
async def http(mock: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock.base_url, headers=AUTH, timeout=10) as client:
        yield client
