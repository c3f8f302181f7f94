"""The ``streamfan`` command and the development tooling: what runs processes, not what they share.

``main`` dispatches ``streamfan COMMAND``; ``commands`` holds the client-side
commands (``submit``, ``tail``, ``token``, ``status``, ``cancel``), ``up`` runs
everything on one machine, ``redis_server`` the embedded Valkey server that ``up``
and the test suite start, and ``mock`` the ``mock-upstream`` command around
:class:`streamfan.mock.MockUpstream`. ``python -m cli`` is the ``streamfan`` command.

This package sits above the others: it may import ``streamfan``, ``worker`` and
``gateway`` (the ``worker`` and ``gateway`` commands are theirs), and none of
them imports it. Tests and benchmarks may.
"""
