"""Benchmarks for streamfan: ``python -m bench SCENARIO [options]``.

Scenarios (one module each): ``fanout``, ``ttft``, ``ingest``, ``memory``; ``plot``
draws the charts in ``docs/img/`` from the JSON in ``bench/results/``. Shared
harness: :mod:`bench.machine` (what the machine and a process measure),
:mod:`bench.report` (tables, JSON, percentiles, progress), :mod:`bench.procs`
(child processes), :mod:`bench.wsclient` (a minimal WebSocket client cheap enough
to run thousands of per process), :mod:`bench.loadgen` (the client processes),
:mod:`bench.producer` (writes events with the worker's publisher),
:mod:`bench.servers` (the ceiling and naive baseline servers).

Everything runs on 127.0.0.1, is bounded in count and time, and stops by itself.
"""
