"""`/metrics`: the node's own numbers in the Prometheus text format (version 0.0.4).

Pure: `render_metrics` turns what the `status` op answers (server/node.py) and the
HTTP API's counters into text; it reads no clock and no socket, so a unit test can
check every line. Only numbers the node already keeps are exported, each under one
name with a HELP and TYPE line; counters end in `_total`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ringlock.raft.messages import Role
from ringlock.sharding.meta import META_GROUP

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTERS = {
    # status "counters" key -> (metric name, help)
    "requests": ("ringlock_requests_total", "Client requests dispatched by this node."),
    "forwarded": ("ringlock_forwarded_total",
                  "Client requests relayed to the shard leader on another node."),
    "meta_relayed": ("ringlock_meta_relayed_total",
                     "Node requests relayed to the meta group's leader."),
    "raft_in": ("ringlock_raft_messages_in_total", "Raft messages stepped from peers."),
    "raft_dropped": ("ringlock_raft_messages_dropped_total",
                     "Raft messages from peers dropped (bad, or for no replica here)."),
    "syncs": ("ringlock_wal_syncs_total", "Write-ahead log fsyncs (group commits)."),
    "snapshots_sent": ("ringlock_snapshots_sent_total", "Snapshots sent to peers."),
    "snapshots_installed": ("ringlock_snapshots_installed_total",
                            "Snapshots received and installed."),
    "leader_transfers": ("ringlock_leader_transfers_total",
                         "Leadership transfers this node started."),
}
_WAL = {
    "bytes_written": ("ringlock_wal_bytes_written_total", "counter",
                      "Bytes written to the write-ahead log."),
    "segments": ("ringlock_wal_segments", "gauge", "Write-ahead log segment files on disk."),
    "torn_bytes_cut": ("ringlock_wal_torn_bytes_cut_total", "counter",
                       "Bytes of a torn log tail cut off at open."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[Mapping[str, str], Any]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{text}}} {_number(value)}" if text
                              else f"{name} {_number(value)}")


def render_metrics(status: Mapping[str, Any], http: Mapping[str, Any]) -> str:
    """Prometheus text for one node. `status` is the `status` op's answer; `http` holds
    `in_flight` (int) and `responses` ({status code: count})."""
    out = _Writer()
    out.family("ringlock_node_info", "gauge", "This node's id and client address.",
               [({"node": str(status.get("node", 0)),
                  "address": str(status.get("address", ""))}, 1)])
    out.family("ringlock_uptime_seconds", "gauge", "Seconds since the node started.",
               [({}, status.get("uptime_s", 0.0))])
    counters = status.get("counters", {})
    for key, (name, help_text) in _COUNTERS.items():
        if key in counters:
            out.family(name, "counter", help_text, [({}, counters[key])])
    shards = [row for row in status.get("shards", []) if len(row) >= 6]

    def group(shard: int) -> dict[str, str]:
        return {"group": "meta" if shard == META_GROUP else str(shard)}

    out.family("ringlock_raft_term", "gauge", "Current Raft term of each group replica here.",
               [(group(row[0]), row[3]) for row in shards])
    out.family("ringlock_raft_commit_index", "gauge", "Raft commit index of each replica.",
               [(group(row[0]), row[4]) for row in shards])
    out.family("ringlock_raft_applied_index", "gauge", "Raft applied index of each replica.",
               [(group(row[0]), row[5]) for row in shards])
    out.family("ringlock_raft_leader", "gauge", "1 if this node leads the group, else 0.",
               [(group(row[0]), int(row[1] == Role.LEADER)) for row in shards])
    out.family("ringlock_replicas", "gauge", "Shard replicas hosted here (meta excluded).",
               [({}, sum(1 for row in shards if row[0] != META_GROUP))])
    out.family("ringlock_leaders_held", "gauge", "Shards this node leads (meta excluded).",
               [({}, sum(1 for row in shards
                         if row[0] != META_GROUP and row[1] == Role.LEADER))])
    out.family("ringlock_map_version", "gauge", "Version of the cluster map this node holds.",
               [({}, status.get("map_version", 0))])
    out.family("ringlock_peer_connected", "gauge", "1 if the link to the peer is up.",
               [({"peer": str(peer)}, bool(up))
                for peer, up in sorted(status.get("peers", {}).items())])
    out.family("ringlock_lock_waits_open", "gauge", "Lock waits held open on this node.",
               [({}, status.get("lock_waits_open", 0))])
    out.family("ringlock_lock_grants_pushed_total", "counter",
               "Lock grants pushed to waiting clients.",
               [({}, status.get("lock_grants_pushed", 0))])
    wal = status.get("wal") or {}
    for key, (name, kind, help_text) in _WAL.items():
        if key in wal:
            out.family(name, kind, help_text, [({}, wal[key])])
    out.family("ringlock_http_requests_in_flight", "gauge", "HTTP requests being served.",
               [({}, http.get("in_flight", 0))])
    out.family("ringlock_http_responses_total", "counter", "HTTP responses by status code.",
               [({"code": str(code)}, count)
                for code, count in sorted(http.get("responses", {}).items())])
    return "\n".join(out.lines) + "\n"
