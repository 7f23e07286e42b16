"""Proving the cluster secret without sending it: a challenge-response, sans-I/O.

Theory of operation. The side that connects (a client, a peer, a node relaying) and the
side that accepts each pick a fresh random nonce for the connection; each proves it
knows the secret with an HMAC-SHA256 over both nonces:

    connecting side                                 accepting side
    hello {nonce_c [, node, cluster]}         ->
                                              <-    {ok: {nonce_s, cluster, proof_s}}
    auth  {proof_c}, then requests at once    ->    proof_c checked before any request;
                                              <-    wrong: {id 0, err Unauthorized}, closed

    proof_r = HMAC(secret, CONTEXT | r | cluster | node | nonce_c | nonce_s),
    r = "accept" for proof_s and "connect" for proof_c, each field length-prefixed.

Why this shape:
  * the secret never crosses the wire, only MACs of values the other side chose;
  * a proof covers the other side's fresh nonce, so one captured on one connection
    matches no other (no replay), and the role label stops a proof from being
    reflected back to the side that made it;
  * the peer's claimed node id and the cluster name are bound into the proof, so an
    answer cannot be moved to a hello that claims another identity;
  * the connecting side checks proof_s before it sends anything else: a party that
    has a secret talks only to nodes that know the same one;
  * one round trip per connection: requests follow the proof without waiting.

Nothing here reads a clock or a socket; `server/connection.py`, `transport/rpc.py` and
`transport/peer.py` carry these dicts in frames.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Any

from ringlock.errors import BadRequest, Unauthorized

CONTEXT = b"ringlock-auth-v1"
"""Versions the proof: a future scheme cannot be confused with this one."""
NONCE_BYTES = 32
MAX_SECRET_BYTES = 4096
"""A secret longer than this is refused by config: it is a password, not a file."""
MISSING_SECRET = ("this cluster requires a secret (set RINGLOCK_SECRET or pass secret=; "
                  "see `ringlock certs`)")


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def compute_proof(secret: str, role: bytes, cluster: str, node: int, nonce_connect: bytes,
                  nonce_accept: bytes) -> bytes:
    """HMAC-SHA256 of every field, each length-prefixed (no two field lists collide)."""
    mac = hmac.new(secret.encode(), CONTEXT, hashlib.sha256)
    for part in (role, cluster.encode(), str(node).encode(), nonce_connect, nonce_accept):
        mac.update(struct.pack(">I", len(part)))
        mac.update(part)
    return mac.digest()


def _nonce(body: Any, name: str) -> bytes:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise BadRequest(f"handshake: {name!r} must be {NONCE_BYTES} bytes")
    return value


class AcceptHandshake:
    """The accepting side of one connection: `challenge(hello)`, then `verify(auth)`
    exactly once. Any failure raises a typed error; the caller closes the connection."""

    def __init__(self, secret: str, cluster: str, *, nonce: bytes | None = None) -> None:
        if not secret:
            raise ValueError("a handshake needs a secret")
        self._secret = secret
        self.cluster = cluster
        self._nonce_accept = nonce if nonce is not None else new_nonce()
        self._nonce_connect: bytes | None = None
        self.node = 0
        """The node id the hello claimed (0 for a client), bound into both proofs."""
        self._used = False

    def challenge(self, hello: dict[str, Any]) -> dict[str, Any]:
        if self._nonce_connect is not None:
            raise BadRequest("handshake: a second hello on one connection")
        if "nonce" not in hello:
            raise Unauthorized(MISSING_SECRET)
        nonce_connect = _nonce(hello, "nonce")
        node = hello.get("node", 0)
        if type(node) is not int or node < 0:
            raise BadRequest(f"handshake: node must be a non-negative int, got {node!r:.40}")
        self._nonce_connect, self.node = nonce_connect, node
        proof = compute_proof(self._secret, b"accept", self.cluster, node, nonce_connect,
                              self._nonce_accept)
        return {"auth": True, "nonce": self._nonce_accept, "cluster": self.cluster,
                "proof": proof}

    def verify(self, auth: dict[str, Any]) -> None:
        if self._nonce_connect is None:
            raise Unauthorized("handshake: auth before hello")
        if self._used:
            raise Unauthorized("handshake: this connection already answered its challenge")
        self._used = True
        proof = auth.get("proof")
        expected = compute_proof(self._secret, b"connect", self.cluster, self.node,
                                 self._nonce_connect, self._nonce_accept)
        if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
            raise Unauthorized("wrong cluster secret: the proof does not match")


class ConnectHandshake:
    """The connecting side: send `hello()`, pass the answer's `ok` to `answer`, which
    checks the accepting side's proof and returns the `auth` request to send."""

    def __init__(self, secret: str, *, node: int = 0, cluster: str = "",
                 nonce: bytes | None = None) -> None:
        if not secret:
            raise ValueError("a handshake needs a secret")
        self._secret = secret
        self.node = node
        self.cluster = cluster
        self._nonce_connect = nonce if nonce is not None else new_nonce()

    def hello(self) -> dict[str, Any]:
        body: dict[str, Any] = {"op": "hello", "nonce": self._nonce_connect}
        if self.node:
            body.update(node=self.node, cluster=self.cluster)
        return body

    def answer(self, challenge: Any, where: str = "the node") -> dict[str, Any]:
        if not isinstance(challenge, dict):
            raise Unauthorized(f"{where} answered the handshake with {challenge!r:.60}")
        if challenge.get("auth") is not True:
            raise Unauthorized(f"{where} has no cluster secret, but this side has one: "
                               "refusing to talk to it (start every node with the secret)")
        nonce_accept = _nonce(challenge, "nonce")
        cluster = challenge.get("cluster")
        if not isinstance(cluster, str) or (self.node and cluster != self.cluster):
            raise Unauthorized(f"{where} belongs to cluster {cluster!r:.60}")
        expected = compute_proof(self._secret, b"accept", cluster, self.node,
                                 self._nonce_connect, nonce_accept)
        proof = challenge.get("proof")
        if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
            raise Unauthorized(f"{where} proved a different cluster secret than ours: "
                               "a wrong secret, here or there")
        return {"op": "auth", "proof": compute_proof(
            self._secret, b"connect", cluster, self.node, self._nonce_connect, nonce_accept)}
