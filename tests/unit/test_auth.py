"""The secret's challenge-response (transport/auth.py): a right proof passes; a wrong
secret, a replayed or reflected proof, and a malformed hello each get a typed error."""

from __future__ import annotations

from typing import Any

import pytest

from ringlock.errors import BadRequest, Unauthorized
from ringlock.transport.auth import NONCE_BYTES, AcceptHandshake, ConnectHandshake


def run(connect: ConnectHandshake, accept: AcceptHandshake) -> dict[str, Any]:
    """One exchange, as the frames would carry it; returns the auth request sent."""
    challenge = accept.challenge(connect.hello())
    auth = connect.answer(challenge)
    accept.verify(auth)
    return auth


@pytest.mark.parametrize("node", [0, 7])  # a client, a peer
def test_both_sides_knowing_the_secret_pass(node: int) -> None:
    connect = ConnectHandshake("s3cret", node=node, cluster="c")
    accept = AcceptHandshake("s3cret", "c")
    auth = run(connect, accept)
    assert auth["op"] == "auth" and len(auth["proof"]) == 32
    assert accept.node == node
    assert "s3cret" not in repr(connect.hello()) + repr(auth)  # never sent in clear


def test_a_connecting_side_with_the_wrong_secret_is_refused_by_the_node() -> None:
    accept = AcceptHandshake("right", "c")
    connect = ConnectHandshake("wrong")
    challenge = accept.challenge(connect.hello())
    # The connecting side notices first (the node's proof does not match its secret)...
    with pytest.raises(Unauthorized, match="different cluster secret"):
        connect.answer(challenge)
    # ... and a proof it made anyway is refused by the node.
    forged = ConnectHandshake("wrong", nonce=connect.hello()["nonce"])
    challenge_ok = {**challenge, "proof": AcceptHandshake(
        "wrong", "c", nonce=challenge["nonce"]).challenge(connect.hello())["proof"]}
    with pytest.raises(Unauthorized, match="wrong cluster secret"):
        accept.verify(forged.answer(challenge_ok))


def test_a_replayed_proof_fails_on_a_new_connection() -> None:
    connect = ConnectHandshake("s3cret")
    captured_hello = connect.hello()
    captured_auth = run(connect, AcceptHandshake("s3cret", "c"))
    later = AcceptHandshake("s3cret", "c")  # a new connection: a fresh nonce
    later.challenge(captured_hello)
    with pytest.raises(Unauthorized):
        later.verify(captured_auth)


def test_a_proof_is_checked_once_and_only_after_hello() -> None:
    accept = AcceptHandshake("s3cret", "c")
    with pytest.raises(Unauthorized, match="before hello"):
        accept.verify({"proof": b"x" * 32})
    connect = ConnectHandshake("s3cret")
    auth = run(connect, accept)
    with pytest.raises(Unauthorized, match="already"):
        accept.verify(auth)


def test_the_nodes_own_proof_reflected_back_is_refused() -> None:
    accept = AcceptHandshake("s3cret", "c")
    challenge = accept.challenge(ConnectHandshake("s3cret").hello())
    with pytest.raises(Unauthorized):
        accept.verify({"proof": challenge["proof"]})


def test_a_proof_is_bound_to_the_claimed_node() -> None:
    connect = ConnectHandshake("s3cret", node=2, cluster="c")
    accept = AcceptHandshake("s3cret", "c")
    hello = {**connect.hello(), "node": 3}  # someone rewrites the claimed identity
    challenge = accept.challenge(hello)
    with pytest.raises(Unauthorized):
        connect.answer(challenge)


@pytest.mark.parametrize("hello, error", [
    ({"op": "hello"}, Unauthorized),  # no nonce: the client has no secret
    ({"op": "hello", "nonce": b"short"}, BadRequest),
    ({"op": "hello", "nonce": "x" * NONCE_BYTES}, BadRequest),
    ({"op": "hello", "nonce": b"x" * NONCE_BYTES, "node": "1"}, BadRequest),
    ({"op": "hello", "nonce": b"x" * NONCE_BYTES, "node": -1}, BadRequest),
])
def test_malformed_hellos_get_typed_errors(hello: dict[str, Any], error: type[Exception]
                                           ) -> None:
    with pytest.raises(error):
        AcceptHandshake("s3cret", "c").challenge(hello)


@pytest.mark.parametrize("challenge", [
    None, "x", {"auth": False}, {"auth": True}, {"auth": True, "nonce": b"x" * NONCE_BYTES},
    {"auth": True, "nonce": b"x" * NONCE_BYTES, "cluster": "c", "proof": b"y" * 32},
])
def test_malformed_or_unproved_challenges_are_refused(challenge: Any) -> None:
    with pytest.raises((Unauthorized, BadRequest)):
        ConnectHandshake("s3cret").answer(challenge)
