"""What the machine offers this process: CPU cores it may run on, and whether a host can be reached.

Every core count of the project (benchmarks, timings, the notebooks' setup line, worker defaults) comes from
:func:`cpu_count`; every download asks :func:`is_online` first. This module imports nothing from ``utils``.
"""
from __future__ import annotations

import os
import socket


def cpu_count() -> int:
    """Cores this process may run on: its CPU affinity where the OS tells (Linux; a container's or ``taskset``'s
    limit), else the machine's count; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows: no affinity call
        return max(1, os.cpu_count() or 1)


def is_online(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` seconds: every download asks this first, so that
    offline a download fails in one line at once instead of hanging or printing a library's traceback."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
