"""utils.machine: the one core count (affinity-aware) and the network probe every download asks first."""
from __future__ import annotations

import os
import socket

import pytest

from utils import machine


def test_cores_are_those_this_process_may_run_on(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert machine.cpu_count() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)  # e.g. taskset -c 0,3,5
    assert machine.cpu_count() == 3


@pytest.mark.parametrize("reported, expected", [(8, 8), (None, 1)])
def test_without_an_affinity_call_the_machine_count_at_least_one(monkeypatch, reported, expected):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: reported)
    assert machine.cpu_count() == expected


def test_online_means_port_443_answers_in_time(monkeypatch):
    asked = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        asked.append((address, timeout))
        if address[0] == "down.example":
            raise TimeoutError("timed out")
        return Conn()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert machine.is_online("up.example", timeout=0.5) is True
    assert machine.is_online("down.example") is False  # offline: a plain False, never an exception
    assert asked == [(("up.example", 443), 0.5), (("down.example", 443), 3.0)]
