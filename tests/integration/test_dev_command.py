"""`ringlock dev`: starts a cluster, stops every process it started on SIGTERM, and a
second run on the same directory is the same cluster with its data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ringlock.client import Client
from ringlock.devcluster import free_base_port

READY_DEADLINE_S = 60


def start_dev(data: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ringlock", "dev", "--nodes", "3", "--data", str(data),
         "--port", str(port), "--shards", "4",
         "--http-port", "0"],  # the probe found free client ports only
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_ready(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops the cluster" in line:
            return lines
    raise AssertionError("ringlock dev never became ready:\n" + "".join(lines))


def node_pids(data: Path) -> list[int]:
    return [int((data / f"node-{n}" / "pid").read_text()) for n in (1, 2, 3)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def stop_dev(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def test_dev_stops_what_it_started_and_restarts_the_same_cluster(tmp_path: Path) -> None:
    data, port = tmp_path / "dev", free_base_port(3)
    addresses = [f"127.0.0.1:{port + i}" for i in range(3)]
    first = start_dev(data, port)
    try:
        wait_for_ready(first)
        pids = node_pids(data)
        with Client(addresses, timeout=20) as client:
            client.put("survives", "a restart of the dev cluster")
    finally:
        stop_dev(first)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "ringlock dev left node processes behind"

    second = start_dev(data, port)
    try:
        wait_for_ready(second)
        with Client(addresses, timeout=20) as client:
            assert client.get("survives") == b"a restart of the dev cluster"
    finally:
        stop_dev(second)
