"""``python -m cli ARGS`` is ``streamfan ARGS`` (``streamfan up`` and the tests run it)."""

from __future__ import annotations

import sys

from cli.main import main

sys.exit(main())
