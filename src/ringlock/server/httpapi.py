"""The node's HTTP API (docs/HTTP.md): JSON over aiohttp, on the node's own event loop.

Theory of operation:
  * An HTTP request is translated into the same request body an RPC client sends
    (`{"op": "get", "shard": ..., "key": ...}`) and handed to `Node.dispatch`, the one
    function every client request goes through: its field checks and limits,
    forwarding to the shard leader, linearizable reads (ReadIndex) and exactly-once
    sessions all apply unchanged. Nothing here reads or writes a state machine.
  * What only HTTP has is checked here, before anything is dispatched: the bearer
    secret, the request's size, concurrency and deadline, the query string (unknown
    or repeated parameters are refused, so a typo never silently means a default),
    and the value encoding.
  * Every refusal is a typed error from ringlock.errors, answered as
    `{"error": "<class name>", "message": ...}` with the status of `STATUS_OF`; a
    refused request changed nothing. An unexpected exception is a bug: logged, 500.
  * Keys are bytes: the path after `/v1/kv/` is percent-decoded to bytes as it is
    (no normalisation: `..` is part of the key). Values are UTF-8 text by default and
    base64 with `?encoding=base64`, both ways.

Requests that are not HTTP at all (an unknown method, a request line or headers over
the parser's limits, a bad Content-Length) never reach a handler: aiohttp's parser
refuses them, and `_ParserRefusals` words that refusal as the same typed JSON error
(BadRequest, 400) before the connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from ringlock.address import parse_address
from ringlock.errors import (
    BadRequest,
    CommandFailed,
    Compacted,
    InvariantViolation,
    NotFound,
    NotLeader,
    RequestError,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    WrongShard,
)
from ringlock.server.config import MAX_KEY_BYTES, MAX_VALUE_BYTES, NodeConfig, is_loopback
from ringlock.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ringlock.server.metrics import render_metrics
from ringlock.server.requests import encode_result
from ringlock.sharding.keys import shard_of
from ringlock.transport.tls import TLS_HANDSHAKE_TIMEOUT_S

if TYPE_CHECKING:
    from ringlock.server.node import Node

log = logging.getLogger("ringlock.http")

HTTP_BODY_SLACK_BYTES = 1024
"""Room above a largest value's base64 form (a trailing newline from `curl -d @file`)."""


def max_http_body_bytes(max_value_bytes: int) -> int:
    """A body holds one value, base64-encoded at worst (4 bytes per 3), plus slack."""
    return 4 * math.ceil(max_value_bytes / 3) + HTTP_BODY_SLACK_BYTES


def max_http_line_bytes(max_key_bytes: int) -> int:
    """A request line holds a largest key percent-encoded (3 bytes per byte) and a query:
    a key over max_key_bytes still reaches the handler and gets a typed TooLarge."""
    return 3 * max_key_bytes + 4096


MAX_HTTP_BODY_BYTES = max_http_body_bytes(MAX_VALUE_BYTES)
"""Default largest request body (the node's max_value_bytes decides it); more: 413."""
MAX_HTTP_LINE_BYTES = max_http_line_bytes(MAX_KEY_BYTES)
"""Default longest request line; longer is refused by aiohttp's parser (plain 400)."""
MAX_HTTP_FIELD_BYTES = 8190
"""Longest header line (aiohttp's default), which also bounds the bearer secret."""
MAX_HTTP_HEADERS = 64
"""Headers per request; more are refused by aiohttp's parser (plain 400)."""
MAX_HTTP_CONCURRENT_REQUESTS = 256
"""HTTP requests served at once; more get 503 Unavailable (with Retry-After) at once,
rather than queue without bound behind a slow shard."""
HTTP_REQUEST_TIMEOUT_S = 10.0
"""A request's deadline, body read included (past the node's 5 s relay timeout);
past it: 504 Timeout, and a write may or may not have been applied."""
HTTP_KEEPALIVE_S = 15.0
"""An idle keep-alive connection is closed after this long."""
HTTP_SHUTDOWN_S = 2.0
"""A stopping node waits this long for HTTP requests still being answered (the replicas'
waiting requests were failed just before: they answer at once)."""
MAX_QUERY_PARAMS = 16
MAX_INT_DIGITS = 19
"""Integers in a query are 0..2**63-1 (what the wire's ints hold): at most 19 digits."""
DEFAULT_SCAN_LIMIT = 100
RETRY_AFTER_S = 1


class PreconditionFailed(CommandFailed):
    """A write with `prev_revision` found the key at another revision: nothing changed."""

    code = "CommandFailed"


ENCODINGS = ("utf-8", "base64")
NO_PARAMS: frozenset[str] = frozenset()
GET_PARAMS = frozenset({"encoding", "consistency"})
PUT_PARAMS = frozenset({"encoding", "lease", "prev", "prev_revision", "client", "seq"})
DELETE_PARAMS = frozenset({"encoding", "prev", "prev_revision", "client", "seq"})
SCAN_PARAMS = frozenset({"prefix", "after", "limit", "encoding", "consistency"})
STATUS_OF: dict[type[RequestError], int] = {
    BadRequest: 400, Unauthorized: 401, NotFound: 404, TooLarge: 413,
    PreconditionFailed: 412, CommandFailed: 409, Compacted: 410, RequestTimeout: 504,
    Unavailable: 503, NotLeader: 503, WrongShard: 503,
}
"""A typed error's HTTP status: the first class in its MRO found here (so FencedOut
and NotHolder, CommandFailed's children, are 409, and PreconditionFailed 412); any
other RequestError is 503."""
_HTTP_STATUS_ERRORS: dict[int, type[RequestError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 405: BadRequest, 413: TooLarge}
"""aiohttp's own refusals (no route, wrong method, body over client_max_size) as
typed errors; any other 4xx is a BadRequest."""
_SECRET_EXEMPT = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(error: RequestError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 503


def error_name(error: RequestError) -> str:
    """The typed error's name as clients see it (PreconditionFailed is a CommandFailed:
    only the classes of ringlock.errors are named on the wire)."""
    return "CommandFailed" if isinstance(error, PreconditionFailed) else type(error).__name__


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def json_response(body: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(body, default=_json_default, separators=(",", ":"))
    return web.Response(text=text + "\n", status=status, content_type="application/json",
                        headers=headers)


def error_response(error: RequestError, status: int = 0) -> web.Response:
    """The typed JSON error, with `status` (default: the error class's, `status_of`)."""
    status = status or status_of(error)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ringlock"'
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return json_response({"error": error_name(error), "message": str(error)}, status,
                         headers)


# --------------------------------------------------------------------------- parsing


def parse_query(raw: str, allowed: frozenset[str]) -> dict[str, bytes]:
    """`a=1&b=x%00` -> {"a": b"1", "b": b"x\\x00"}: values percent-decoded to bytes
    (`+` is a space, as in a form). Unknown, repeated or too many parameters: BadRequest."""
    params: dict[str, bytes] = {}
    parts = [part for part in raw.split("&") if part]
    if len(parts) > MAX_QUERY_PARAMS:
        raise BadRequest(f"{len(parts)} query parameters (at most {MAX_QUERY_PARAMS})")
    for part in parts:
        raw_name, _, raw_value = part.partition("=")
        name = unquote_to_bytes(raw_name.replace("+", " ")).decode("utf-8", "replace")
        if name not in allowed:
            raise BadRequest(f"unknown query parameter {name[:40]!r}; "
                             f"allowed here: {sorted(allowed)}")
        if name in params:
            raise BadRequest(f"query parameter {name!r} given twice")
        params[name] = unquote_to_bytes(raw_value.replace("+", " "))
    return params


def text_param(params: dict[str, bytes], name: str, choices: tuple[str, ...],
               default: str) -> str:
    value = params.get(name)
    if value is None:
        return default
    text = value.decode("ascii", "replace")
    if text not in choices:
        raise BadRequest(f"{name} must be one of {choices}, got {text[:40]!r}")
    return text


def int_param(params: dict[str, bytes], name: str) -> int | None:
    """A non-negative decimal below 2**63, or None when absent."""
    value = params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and 0 < len(value) <= MAX_INT_DIGITS):
        raise BadRequest(f"{name} must be a decimal integer in 0..2**63-1, "
                         f"got {value[:40]!r}")
    number = int(value)
    if number >= 2**63:
        raise BadRequest(f"{name} must be in 0..2**63-1, got {number}")
    return number


def bool_param(params: dict[str, bytes], name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    if value not in (b"true", b"false", b"1", b"0"):
        raise BadRequest(f"{name} must be true, false, 1 or 0, got {value[:40]!r}")
    return value in (b"true", b"1")


def decode_value(body: bytes, encoding: str) -> bytes:
    """A PUT body as the value to store: UTF-8 text (checked), or base64 (strict)."""
    if encoding == "base64":
        try:
            return base64.b64decode(body.strip(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadRequest(f"body is not valid base64: {error}") from None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"body is not UTF-8 text ({error.reason} at byte {error.start}); "
                         "send binary values with ?encoding=base64") from None
    return body


def kv_json(raw: Any, encoding: str) -> dict[str, Any]:
    """One stored key, as the wire encodes it ([key, value, create, mod, version, lease]).
    With the default encoding, an item whose key or value is not UTF-8 is given in
    base64 and says so in its `encoding`."""
    key, value, create_revision, mod_revision, version, lease = encode_result(raw)
    used = encoding
    if encoding == "utf-8":
        try:
            key_text, value_text = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            used = "base64"
    if used == "base64":
        key_text = base64.b64encode(key).decode("ascii")
        value_text = base64.b64encode(value).decode("ascii")
    return {"key": key_text, "value": value_text, "encoding": used,
            "create_revision": create_revision, "mod_revision": mod_revision,
            "version": version, "lease": lease}


# --------------------------------------------------------------------------- the API


def secret_in_clear(config: NodeConfig) -> str | None:
    """Why an operator should hear about it: HTTP clients send the cluster secret itself
    as their bearer, so plain HTTP on a non-loopback address shows it to the network,
    and whoever reads it may join as a peer. None when that is not the case."""
    if not (config.http_listen and config.secret) or config.tls:
        return None
    if is_loopback(parse_address(config.http_listen)[0]):
        return None
    return (f"the HTTP API on {config.http_listen} is plain HTTP on a non-loopback "
            "address: every client's bearer (the cluster secret) crosses the network in "
            "clear; give the node TLS (--tls-cert/--tls-key/--tls-ca) or serve HTTP on "
            "loopback")


class HttpApi:
    """The HTTP listener of one node; `start` binds it, `stop` closes it."""

    KV_PREFIX = "/v1/kv/"

    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config
        self.max_body_bytes = max_http_body_bytes(config.max_value_bytes)
        self.max_line_bytes = max_http_line_bytes(config.max_key_bytes)
        self._secret = config.secret.encode("utf-8")
        """The bearer every request must carry (empty: none), encoded once."""
        self.in_flight = 0
        self.responses: dict[int, int] = {}
        """HTTP status code -> responses sent (for /metrics)."""
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.app = web.Application(middlewares=[self._guard()],
                                   client_max_size=self.max_body_bytes)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/v1/status", self.status)
        self.app.router.add_get("/v1/kv", self.scan)
        self.app.router.add_get("/v1/kv/{key:.*}", self.get)
        self.app.router.add_put("/v1/kv/{key:.*}", self.put, expect_handler=self._expect)
        self.app.router.add_delete("/v1/kv/{key:.*}", self.delete,
                                   expect_handler=self._expect)

    async def start(self) -> None:
        """Bind the listener. Its connections are `_ParserRefusals` handlers (aiohttp's
        own, but for how a request the parser refused is answered), made here rather
        than by a TCPSite, which always makes aiohttp's plain ones."""
        host, port = parse_address(self.node.config.http_listen)
        self._runner = web.AppRunner(self.app, handle_signals=False,
                                     shutdown_timeout=HTTP_SHUTDOWN_S)
        await self._runner.setup()
        server = self._runner.server
        if server is None:
            raise InvariantViolation("an AppRunner has a server once set up")
        loop = asyncio.get_running_loop()
        limits = {"max_line_size": self.max_line_bytes, "max_field_size": MAX_HTTP_FIELD_BYTES,
                  "max_headers": MAX_HTTP_HEADERS, "keepalive_timeout": HTTP_KEEPALIVE_S}

        def connection() -> web.RequestHandler:
            return _ParserRefusals(self, server, loop=loop, access_log=None, **limits)

        # A node with TLS serves HTTPS with the same certificate: the bearer is the
        # cluster secret itself, which must not cross the network in clear text when
        # the operator asked for TLS (whoever reads it may join as a peer).
        tls: dict[str, Any] = {} if self.node.server_ssl is None else {
            "ssl": self.node.server_ssl, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
        self._listener = await loop.create_server(connection, host, port, backlog=1024, **tls)
        log.info("node %d: HTTP API on %s%s%s", self.node.id, self.node.config.http_listen,
                 " (HTTPS)" if self.node.server_ssl is not None else "",
                 " (bearer secret required)" if self.node.config.secret else "")
        warning = secret_in_clear(self.node.config)
        if warning:
            log.warning("node %d: %s", self.node.id, warning)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:  # closes the open connections, a short grace first
            await self._runner.cleanup()
            self._runner = None

    def count(self, status: int) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    # ------------------------------------------------------------------ middleware

    def _guard(self) -> Any:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Limits, the secret and the deadline for every request; every refusal and
            error as a typed JSON error; counts by status for /metrics."""
            response = await self._guarded(request, handler)
            self.count(response.status)
            return response

        return guard

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.in_flight >= MAX_HTTP_CONCURRENT_REQUESTS:
            return error_response(Unavailable(
                f"{self.in_flight} HTTP requests in flight on node {self.node.id} "
                f"(MAX_HTTP_CONCURRENT_REQUESTS={MAX_HTTP_CONCURRENT_REQUESTS})"))
        self.in_flight += 1
        try:
            self._authorize(request)
            async with asyncio.timeout(HTTP_REQUEST_TIMEOUT_S):
                return await handler(request)
        except RequestError as error:
            return error_response(error)
        except web.HTTPException as error:  # aiohttp's: no route, wrong method, too large
            if error.status < 400:
                raise
            cls = _HTTP_STATUS_ERRORS.get(error.status, BadRequest)
            message = error.text or error.reason
            if error.status == 404:
                message = f"no endpoint at {request.rel_url.raw_path[:100]!r}; see docs/HTTP.md"
            elif error.status == 405:
                message = f"method {request.method[:20]} not allowed on this path"
            elif error.status == 413:
                message = (f"request body exceeds {self.max_body_bytes} bytes "
                           "(max_http_body_bytes, from max_value_bytes)")
            return error_response(cls(message), error.status if error.status in (404, 405, 413)
                                  else 0)
        except TimeoutError:
            return error_response(RequestTimeout(
                f"no answer within {HTTP_REQUEST_TIMEOUT_S} s (HTTP_REQUEST_TIMEOUT_S); "
                "a write may or may not have been applied"))
        except Exception:
            log.exception("node %d: HTTP %s %.200s failed", self.node.id, request.method,
                          request.rel_url.raw_path)
            return json_response({"error": "InternalError",
                                  "message": "the node hit a bug; see its log"}, 500)
        finally:
            self.in_flight -= 1

    def _authorize(self, request: web.Request) -> None:
        if not self._secret or request.rel_url.raw_path in _SECRET_EXEMPT:
            return
        header = request.headers.get("Authorization")
        if header is None:
            raise Unauthorized("this node requires 'Authorization: Bearer <secret>'")
        scheme, _, token = header.strip().partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        # Constant time in the secret's content: compare_digest on equal-typed bytes.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._secret):
            raise Unauthorized("wrong or malformed bearer secret")

    async def _expect(self, request: web.Request) -> None:
        """`Expect: 100-continue` is answered before any middleware runs: an
        unauthorized client is not invited to send its body (the guard answers 401)."""
        try:
            self._authorize(request)
        except Unauthorized:
            return
        await _default_expect_handler(request)

    # ------------------------------------------------------------------ dispatch

    async def call(self, body: dict[str, Any]) -> Any:
        """One request through `Node.dispatch`, exactly as an RPC client's would go."""
        return await self.node.ask(body)

    def _key(self, request: web.Request) -> tuple[int, bytes]:
        raw = request.rel_url.raw_path
        if not raw.startswith(self.KV_PREFIX):  # the route says it does
            raise BadRequest("a key path starts with /v1/kv/")
        key = unquote_to_bytes(raw[len(self.KV_PREFIX):])
        return shard_of(key, self.node.config.shards), key

    # ------------------------------------------------------------------ handlers

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """200 when the loop answers and the node holds a cluster map (it founded or
        joined a cluster); a load balancer needs no secret to ask."""
        cluster_map = self.node.membership.map
        if cluster_map.version <= 0:
            raise Unavailable(f"node {self.node.id} holds no cluster map yet")
        return json_response({"ok": True, "node": self.node.id,
                              "map_version": cluster_map.version})

    async def status(self, request: web.Request) -> web.StreamResponse:
        parse_query(request.rel_url.raw_query_string, NO_PARAMS)
        return json_response(await self.call({"op": "status"}))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        parse_query(request.rel_url.raw_query_string, NO_PARAMS)
        status = await self.call({"op": "status"})
        text = render_metrics(status, {"in_flight": self.in_flight,
                                       "responses": dict(self.responses)})
        return web.Response(body=text.encode("utf-8"),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def get(self, request: web.Request) -> web.StreamResponse:
        params = parse_query(request.rel_url.raw_query_string, GET_PARAMS)
        encoding = text_param(params, "encoding", ENCODINGS, "utf-8")
        consistency = text_param(params, "consistency", ("linearizable", "stale"),
                                 "linearizable")
        shard, key = self._key(request)
        found = await self.call({"op": "get", "shard": shard, "key": key,
                                 "consistency": consistency})
        if found is None:
            raise NotFound(f"key {key[:80]!r} not found")
        return json_response(kv_json(found, encoding))

    async def put(self, request: web.Request) -> web.StreamResponse:
        params = parse_query(request.rel_url.raw_query_string, PUT_PARAMS)
        encoding = text_param(params, "encoding", ENCODINGS, "utf-8")
        shard, key = self._key(request)
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise TooLarge(f"request body of {length} bytes exceeds {self.max_body_bytes} "
                           "(max_http_body_bytes, from max_value_bytes)")
        value = decode_value(await request.read(), encoding)
        body = self._write_body(params, shard, key)
        prev_revision = int_param(params, "prev_revision")
        if prev_revision is not None:
            if "lease" in params or "prev" in params:
                raise BadRequest("prev_revision cannot be combined with lease or prev")
            await self._compare_and(body, "put", value, prev_revision)
            return json_response({"ok": True})
        lease = int_param(params, "lease")
        if lease is not None:
            body["lease"] = lease
        prev = bool_param(params, "prev")
        previous = await self.call({**body, "op": "put", "value": value, "prev": prev})
        answer: dict[str, Any] = {"ok": True}
        if prev:
            answer["prev"] = None if previous is None else kv_json(previous, encoding)
        return json_response(answer)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        params = parse_query(request.rel_url.raw_query_string, DELETE_PARAMS)
        encoding = text_param(params, "encoding", ENCODINGS, "utf-8")
        shard, key = self._key(request)
        body = self._write_body(params, shard, key)
        prev_revision = int_param(params, "prev_revision")
        if prev_revision is not None:
            if "prev" in params:
                raise BadRequest("prev_revision cannot be combined with prev")
            await self._compare_and(body, "delete", b"", prev_revision)
            return json_response({"deleted": True})
        prev = bool_param(params, "prev")
        result = await self.call({**body, "op": "delete", "prev": prev})
        if not prev:
            return json_response({"deleted": bool(result)})
        return json_response({"deleted": result is not None,
                              "prev": None if result is None else kv_json(result, encoding)})

    def _write_body(self, params: dict[str, bytes], shard: int,
                    key: bytes) -> dict[str, Any]:
        """A write's common fields; `client` and `seq` (both or neither) make an HTTP
        client's retry apply once, as the RPC client's sessions do."""
        body: dict[str, Any] = {"shard": shard, "key": key}
        client, seq = int_param(params, "client"), int_param(params, "seq")
        if (client is None) != (seq is None):
            raise BadRequest("client and seq go together (exactly-once retries)")
        if client is not None:
            body["client"], body["seq"] = client, seq
        return body

    async def _compare_and(self, body: dict[str, Any], then: str, value: bytes,
                           prev_revision: int) -> None:
        """The write only if the key's mod_revision is `prev_revision` (0: absent)."""
        held = await self.call({**body, "op": "cas", "target": "mod_revision",
                                "expected": prev_revision, "then": then, "value": value})
        if not held:
            raise PreconditionFailed(
                f"key's mod_revision is not {prev_revision} (prev_revision; 0 means absent)"
                "; nothing changed")

    async def scan(self, request: web.Request) -> web.StreamResponse:
        """Keys by prefix, in key order, from every shard (as `Client.scan` merges)."""
        params = parse_query(request.rel_url.raw_query_string, SCAN_PARAMS)
        encoding = text_param(params, "encoding", ENCODINGS, "utf-8")
        consistency = text_param(params, "consistency", ("linearizable", "stale"),
                                 "linearizable")
        limit = int_param(params, "limit")
        limit = DEFAULT_SCAN_LIMIT if limit is None else limit
        common = {"op": "scan", "prefix": params.get("prefix", b""),
                  "after": params.get("after", b""), "limit": limit,
                  "consistency": consistency}
        parts = await asyncio.gather(*(self.call({**common, "shard": shard})
                                       for shard in range(self.node.config.shards)))
        found = sorted((raw for part in parts for raw in part), key=lambda raw: raw[0])
        items = [kv_json(raw, encoding) for raw in found[:limit]]
        size = sum(len(item["key"]) + len(item["value"]) for item in items)
        if size > self.node.config.max_frame_bytes:
            raise TooLarge(f"answer of {size} bytes exceeds max_frame_bytes="
                           f"{self.node.config.max_frame_bytes}; ask with a lower limit")
        return json_response({"items": items, "count": len(items),
                              "truncated": len(found) > limit
                              or any(len(part) >= limit for part in parts)})


class _ParserRefusals(web.RequestHandler):
    """aiohttp's connection handler, but a request its parser refused (status 4xx) is
    answered with the typed JSON error every other refusal gets, not plain text, and
    logged at debug level: a port scanner must not fill the log with tracebacks."""

    def __init__(self, api: HttpApi, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._api = api

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent on this connection")
        log.debug("HTTP request refused by the parser: %s", message or exc)
        self._api.count(status)
        text = (message or str(exc) or "malformed HTTP request").splitlines()[0][:200]
        response = error_response(BadRequest(f"malformed HTTP request: {text}"), status)
        response.force_close()
        return response
