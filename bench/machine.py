"""What the machine is, and what a process costs: CPU ticks and RSS from /proc, Redis stats."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 0,
        "ram_bytes": ram,
        "ram_gib": round(ram / 2**30, 1),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit in this process; return the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (seconds), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class CpusMeter:
    """:class:`CpuMeter` summed over several processes (a cluster's nodes)."""

    pids: list[int]
    meters: list[CpuMeter] | None = None

    def start(self) -> CpusMeter:
        self.meters = [CpuMeter(pid).start() for pid in self.pids]
        return self

    def stop(self) -> CpusMeter:
        for m in self.meters or []:
            m.stop()
        return self

    @property
    def cpu_s(self) -> float:
        return sum(m.cpu_s for m in self.meters or [])

    @property
    def wall_s(self) -> float:
        return max((m.wall_s for m in self.meters or []), default=0.0)

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class CpuMeter:
    """CPU cores used by a process between :meth:`start` and :meth:`stop`."""

    pid: int
    cpu0: float = 0.0
    t0: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def start(self) -> CpuMeter:
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.cpu_s = cpu_seconds(self.pid) - self.cpu0
        self.wall_s = time.monotonic() - self.t0
        return self

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass
class MachineMeter:
    """Busy cores of the whole machine (every process, ours and others') over a window."""

    busy0: int = 0
    total0: int = 0
    busy_cores: float = 0.0

    def start(self) -> MachineMeter:
        self.busy0, self.total0 = machine_busy_ticks()
        return self

    def stop(self) -> MachineMeter:
        busy, total = machine_busy_ticks()
        share = (busy - self.busy0) / max(total - self.total0, 1)
        self.busy_cores = share * (os.cpu_count() or 1)
        return self


def commandstats(url: str) -> dict[str, int]:
    """calls per command (``INFO commandstats``), lower-case names; summed over
    the masters when ``url`` is a node of a Redis Cluster."""
    out: dict[str, int] = {}
    for node_url in _masters(url):
        with redis.Redis.from_url(node_url) as r:
            info = r.info("commandstats")
        for key, value in info.items():
            name = key.removeprefix("cmdstat_")
            out[name] = out.get(name, 0) + int(value["calls"])
    return out


def _masters(url: str) -> list[str]:
    with redis.Redis.from_url(url) as r:
        if not int(r.info("cluster").get("cluster_enabled", 0)):
            return [url]
        slots = r.execute_command("CLUSTER", "SLOTS")
    nodes = {(m[0].decode(), int(m[1])) for _a, _b, m, *_ in slots}
    return [f"redis://{host}:{port}" for host, port in sorted(nodes)]


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two snapshots, without INFO itself (the measuring)."""
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(diff.items()) if v > 0 and k != "info"}
