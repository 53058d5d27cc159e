"""The HTTP layer of the ``openai:`` client: POST a JSON body, get status, headers and text back.

``StdlibTransport`` (the default) keeps one keep-alive ``http.client`` connection per worker thread.
Measured against a local server on a 2-core machine it costs about 0.25 ms of CPU per request, against
3.4 ms for ``httpx`` from the same threads and 6-9 ms for ``httpx``'s and the official ``openai``
client's async APIs (``docs/performance.md``, client section): at 150+ requests/s the client itself
would otherwise need more than a core. ``HttpxTransport`` is used when a proxy applies to the server
(``HTTP(S)_PROXY``; ``http.client`` does not read them).

Failures are raised as the four exception types below, whatever the library; the backend decides
what to retry and how to word it.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import urllib.request
from urllib.parse import urlsplit


class TransportTimeout(Exception):
    """No answer within the timeout."""


class TransportConnectError(Exception):
    """The server could not be reached (refused, unknown host, connect timeout)."""


class TransportDropped(Exception):
    """The connection broke mid-request (server crash, reset, truncated reply)."""


class TransportFatal(Exception):
    """Anything a retry cannot fix (TLS verification, an unsupported URL)."""


class Response:
    """What the backend reads of a reply: ``status_code``, lower-cased ``headers``, ``text``, ``json()``."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)


def make_transport(url: str, headers: dict[str, str], timeout: float, concurrency: int,
                   basic_auth: tuple[str, str] | None = None):
    """The transport for ``url``: the stdlib one, or httpx when a proxy applies to that host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if proxies.get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname or ""):
        return HttpxTransport(headers, timeout, concurrency, basic_auth)
    return StdlibTransport(headers, timeout, basic_auth)


def _basic(basic_auth: tuple[str, str] | None) -> dict[str, str]:
    if not basic_auth:
        return {}
    token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class StdlibTransport:
    """One persistent ``http.client`` connection per thread (HTTP/1.1 keep-alive)."""

    def __init__(self, headers: dict[str, str], timeout: float, basic_auth: tuple[str, str] | None = None):
        self.headers = {**_basic(basic_auth), **headers, "Accept": "application/json"}
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conns[key] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _connect(self, conn, key) -> None:
        """Open the connection with a short connect timeout (a dead host fails fast), then use the full one."""
        conn.timeout = min(10.0, self.timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as e:
            self._drop(conn, key)
            raise TransportFatal(f"TLS certificate not accepted: {e}") from None
        except (OSError, http.client.HTTPException) as e:  # refused, unknown host, connect timeout, TLS
            self._drop(conn, key)
            raise TransportConnectError(str(e) or type(e).__name__) from None
        conn.sock.settimeout(self.timeout)

    def _drop(self, conn, key) -> None:
        conn.close()
        self._local.__dict__.get("conns", {}).pop(key, None)

    def post(self, url: str, body: dict) -> Response:
        if self._closed:
            raise TransportFatal("the client was closed")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise TransportFatal(f"unsupported URL scheme {parts.scheme!r}")
        key = (parts.scheme, parts.hostname, parts.port)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        data = json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": "application/json", "Content-Length": str(len(data))}
        for attempt in (0, 1):
            conn = self._connection(*key)
            reused = conn.sock is not None
            if not reused:
                self._connect(conn, key)
            try:
                conn.request("POST", path, body=data, headers=headers)
                reply = conn.getresponse()
                content = reply.read()
                return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, content)
            except (TimeoutError, socket.timeout) as e:
                self._drop(conn, key)
                raise TransportTimeout(str(e) or "timed out") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop(conn, key)
                if reused and attempt == 0 and not self._closed:
                    continue  # the server closed an idle keep-alive connection: reconnect once, at once
                raise TransportDropped(f"{type(e).__name__}: {e}") from None
            except (http.client.HTTPException, OSError) as e:
                self._drop(conn, key)
                raise TransportDropped("the client was closed" if self._closed else f"{type(e).__name__}: {e}") from None
        raise TransportDropped("the connection was closed twice")  # pragma: no cover - loop returns or raises

    def close(self) -> None:
        """Close every connection, also those in use by other threads (their requests fail at once)."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
                except OSError:
                    pass
            conn.close()


class HttpxTransport:
    """httpx (which honours ``HTTP(S)_PROXY``): used only when a proxy applies."""

    def __init__(self, headers: dict[str, str], timeout: float, concurrency: int,
                 basic_auth: tuple[str, str] | None = None):
        import httpx

        self._client = httpx.Client(
            headers={**_basic(basic_auth), **headers},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
        )

    def post(self, url: str, body: dict) -> Response:
        import httpx

        try:
            r = self._client.post(url, json=body)
        except httpx.TimeoutException as e:
            if isinstance(e, httpx.ConnectTimeout):
                raise TransportConnectError(f"connect timed out ({e})") from None
            raise TransportTimeout(f"{type(e).__name__}") from None
        except httpx.ConnectError as e:
            raise TransportConnectError(str(e)) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.NetworkError) as e:
            raise TransportDropped(f"{type(e).__name__}: {e}") from None
        except httpx.HTTPError as e:
            raise TransportFatal(f"{type(e).__name__}: {e}") from None
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def close(self) -> None:
        self._client.close()
