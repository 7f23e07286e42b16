"""Network namespaces for `ringlock torture --net netns`: a private network per run.

Why: the transport fault layer (server/faults.py) cuts only Raft messages inside the
node, on loopback. A cut made in the kernel (iptables) or a slow link (tc) hits every
byte the node sends or receives, the way a real network fails. This module builds,
for one run, and tears down, at the end of it:

  * a bridge namespace `rlt-TAG-br` holding the bridge `br0` (nothing is configured in
    the root namespace: no interface, address or rule);
  * per node a namespace `rlt-TAG-nI` with `eth0` = one end of a veth pair whose other
    end is on the bridge, address 10.231.0.(10+I)/24;
  * a client namespace `rlt-TAG-c` (10.231.0.2) on the same bridge. The runner's own
    thread enters it with setns(2) (`enter_client`), so the clients it runs and the
    lock worker processes it starts reach the nodes; it leaves it before teardown.

TAG is random per run, so two runs never share a name. Nodes run under
`ip netns exec NS python ...`: `ip` execs the command, so the PID the runner holds is
the node's own (tested) and every stop, kill and pause is by that PID.

Cuts are iptables rules in the receiving node's INPUT chain (`-s SENDER -j DROP`): a
one-way cut A->B is the one rule on B; a two-way cut is a rule on each side. Healing
flushes INPUT and OUTPUT of every node namespace. Slow and lossy links are `tc netem`
on a node's eth0; a kernel without netem (this project's 2-core VM has none) gets loss
from an iptables `statistic` rule and a narrow link (tbf: queueing delay under load)
instead of a fixed delay, and the fault says so.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.231.0"
PREFIX_LEN = 24
CLIENT_HOST = 2
NODE_HOST_BASE = 10
NODE_PORT = 7101
NAME_PREFIX = "rlt-"
COMMAND_TIMEOUT_S = 10.0
"""Each `ip`/`iptables`/`tc` call: a hung one fails the run instead of hanging it."""
SLOW_LINK_RATE = "2mbit"
"""A slow link's bandwidth where the kernel has no netem (a fallback, see `degrade`)."""
_CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """A namespace, link, rule or qdisc command failed; the message has its stderr."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(command)} failed ({done.returncode}): "
                         f"{done.stderr.strip()}")
    return done


def netns_usable() -> tuple[bool, str]:
    """(True, why) when this process may do all that netns mode does: root, a namespace
    added, an iptables rule in it, a tmpfs mounted. Probes each, and undoes it."""
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("ip", "iptables", "mount"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not installed"
    probe = f"{NAME_PREFIX}probe-{secrets.token_hex(3)}"
    try:
        _run("ip", "netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
        return False, f"`ip netns add` failed: {error}"
    try:
        _run("ip", "netns", "exec", probe, "iptables", "-w", "5", "-A", "INPUT", "-s",
             f"{SUBNET}.1", "-j", "DROP")
        with tempfile.TemporaryDirectory(prefix="rlt-probe-") as directory:
            _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", directory)
            _run("umount", directory)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
        return False, f"iptables or tmpfs unusable: {error}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return True, "root; ip netns, iptables and tmpfs work"


@dataclass
class NetLab:
    """The namespaces of one run. `create()`, then `teardown()` (always, in a finally)."""

    node_ids: list[int]
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)
    netem: bool | None = None
    """Whether the kernel has netem (known after the first try)."""
    _home_fd: int | None = None

    def ns(self, node_id: int) -> str:
        return f"{NAME_PREFIX}{self.tag}-n{node_id}"

    @property
    def bridge_ns(self) -> str:
        return f"{NAME_PREFIX}{self.tag}-br"

    @property
    def client_ns(self) -> str:
        return f"{NAME_PREFIX}{self.tag}-c"

    def ip(self, node_id: int) -> str:
        return f"{SUBNET}.{NODE_HOST_BASE + node_id}"

    def address(self, node_id: int) -> str:
        return f"{self.ip(node_id)}:{NODE_PORT}"

    def launcher(self, node_id: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node_id)]

    def create(self) -> None:
        if not 1 <= len(self.node_ids) <= 200:
            raise NetnsError(f"1..200 nodes fit the /24, got {len(self.node_ids)}")
        self._add_ns(self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        self._attach(self.client_ns, "vc", f"{SUBNET}.{CLIENT_HOST}")
        for node_id in self.node_ids:
            self._attach(self.ns(node_id), f"v{node_id}", self.ip(node_id))

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _attach(self, name: str, bridge_end: str, address: str) -> None:
        self._add_ns(name)
        _run("ip", "-n", self.bridge_ns, "link", "add", bridge_end, "type", "veth",
             "peer", "name", "eth0", "netns", name)
        _run("ip", "-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0", "up")
        _run("ip", "-n", name, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        _run("ip", "-n", name, "link", "set", "eth0", "up")

    # -- the runner's thread in the client namespace ---------------------------------

    def enter_client(self) -> None:
        """Move this thread (and the threads and processes it starts from now on) into
        the client namespace. Network namespaces are per thread: setns(2) here."""
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.client_ns}")

    def leave_client(self) -> None:
        if self._home_fd is None:
            return
        try:
            _setns_fd(self._home_fd)
        finally:
            os.close(self._home_fd)
            self._home_fd = None

    # -- faults ----------------------------------------------------------------------

    def cut(self, sender: int, receiver: int) -> None:
        """Drop every packet from `sender` to `receiver` (one way)."""
        self._iptables(receiver, "-A", "INPUT", "-s", self.ip(sender), "-j", "DROP")

    def heal_cuts(self) -> None:
        for node_id in self.node_ids:
            self._iptables(node_id, "-F", "INPUT")
            self._iptables(node_id, "-F", "OUTPUT")

    def _iptables(self, node_id: int, *rule: str) -> None:
        _run("ip", "netns", "exec", self.ns(node_id), "iptables", "-w", "5", *rule)

    def degrade(self, node_id: int, delay_ms: int, jitter_ms: int, loss_pct: int) -> str:
        """A slow, lossy link on the node's eth0; what was really applied."""
        if self.netem is not False:
            done = _run("tc", "-n", self.ns(node_id), "qdisc", "add", "dev", "eth0", "root",
                        "netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms",
                        "loss", f"{loss_pct}%", check=False)
            self.netem = done.returncode == 0
            if self.netem:
                return f"tc netem delay {delay_ms}ms {jitter_ms}ms loss {loss_pct}%"
        probability = f"{loss_pct / 100:.2f}"
        for chain in ("INPUT", "OUTPUT"):
            self._iptables(node_id, "-A", chain, "-m", "statistic", "--mode", "random",
                           "--probability", probability, "-j", "DROP")
        # No fixed delay without netem; a narrow link instead: a token bucket queues
        # what exceeds its rate, up to `delay_ms`, and drops beyond (a slow link's delay
        # under load, none when idle).
        done = _run("tc", "-n", self.ns(node_id), "qdisc", "add", "dev", "eth0", "root",
                    "tbf", "rate", SLOW_LINK_RATE, "burst", "16kb", "latency",
                    f"{delay_ms}ms", check=False)
        narrowed = (f", tbf rate {SLOW_LINK_RATE} queueing up to {delay_ms}ms"
                    if done.returncode == 0 else "")
        return (f"no netem in this kernel: iptables statistic loss {loss_pct}% each way"
                f"{narrowed}")

    def heal_links(self) -> None:
        """Delete any root qdisc (netem or tbf; none there is fine) and every rule."""
        for node_id in self.node_ids:
            _run("tc", "-n", self.ns(node_id), "qdisc", "del", "dev", "eth0", "root",
                 check=False)
        self.heal_cuts()

    def teardown(self) -> list[str]:
        """Delete every namespace this run made (their veths go with them); the errors."""
        self.leave_client()
        errors = []
        for name in reversed(self.created):
            done = _run("ip", "netns", "del", name, check=False)
            if done.returncode != 0:
                errors.append(f"{name}: {done.stderr.strip()}")
        self.created.clear()
        return errors


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(errno)}")


@dataclass
class Disk:
    """A small tmpfs per node data directory (root only), for the full-disk fault."""

    size_mib: int
    mounted: list[Path] = field(default_factory=list)

    def mount(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755", "tmpfs",
             str(path))
        self.mounted.append(path)

    def fill(self, path: Path) -> int:
        """Write a ballast file until the filesystem is full; the bytes written."""
        written = 0
        fd = os.open(path / "ballast", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for size in (1 << 20, 4096, 1):  # then the last partial block
                for _ in range((self.size_mib << 20) // size + 1):  # bounded by the size
                    try:
                        written += os.write(fd, bytes(size))
                    except OSError:
                        break
        finally:
            os.close(fd)
        return written

    @staticmethod
    def free(path: Path) -> None:
        (path / "ballast").unlink(missing_ok=True)

    def unmount_all(self) -> list[str]:
        errors = []
        for path in reversed(self.mounted):
            done = _run("umount", "-l", str(path), check=False)
            if done.returncode != 0:
                errors.append(f"{path}: {done.stderr.strip()}")
        self.mounted.clear()
        return errors
