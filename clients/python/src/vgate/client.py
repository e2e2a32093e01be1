"""``Client`` and ``AsyncClient``: one connection pool to the gateway, its errors made typed.

``vgate.configure(...)`` sets what the default clients (made on first use) are built with; every
module (``Predict``, ``Program``, ``Agent``, ...) takes ``client=`` to use another one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from vgate.errors import ConnectionError, VGateError, error_from_response, transport_error

__version__ = "0.1.0"

DEFAULT_BASE_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = 300.0  # a batch of a thousand examples takes a while
MAX_RETRY_WAIT = 30.0  # a Retry-After longer than this is raised, not waited for
DEFAULT_STREAM_TIMEOUT = 60.0  # silence on a stream (heartbeats come every 15 s) before it is taken for dropped


class _Base:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT, stream_timeout: float | None = DEFAULT_STREAM_TIMEOUT,
                 max_retries: int = 0, headers: Mapping[str, str] | None = None) -> None:
        self.base_url = (base_url or os.environ.get("VGATE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("VGATE_API_KEY") or None)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.max_retries = max_retries
        self.headers = {"user-agent": f"vgate-client/{__version__}", **(headers or {})}
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"

    def _timeout(self) -> httpx.Timeout:
        connect = min(self.timeout, 10.0) if self.timeout is not None else 10.0
        return httpx.Timeout(self.timeout, connect=connect)

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._timeout().connect, read=self.stream_timeout, write=self.timeout, pool=self.timeout)

    def _http_options(self) -> dict[str, Any]:
        """What the httpx pool, sync or async, is built with."""
        return {"base_url": self.base_url, "headers": self.headers, "timeout": self._timeout()}

    def _failed_send(self, exc: httpx.TransportError, path: str) -> ConnectionError:
        """A request that failed before an answer came, as the error to retry on; raised at once when
        the request may have reached the gateway (it is never resent)."""
        error = transport_error(exc, f"{self.base_url}{path}")
        if not isinstance(exc, _SAFE_TO_RETRY):
            raise error from exc
        return error

    def _retry_delay(self, error: VGateError, attempt: int) -> float:
        """Seconds to wait before retrying after ``error``, which is raised when it is not retryable,
        or no retries are left."""
        retryable = error.retryable or error.status == 429 or isinstance(error, ConnectionError)
        delay = error.retry_after if error.retry_after is not None else 0.5 * 2**attempt
        if attempt >= self.max_retries or not retryable or delay > MAX_RETRY_WAIT:  # the last: a daily budget
            raise error
        return delay

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


_SAFE_TO_RETRY = (httpx.ConnectError, httpx.ConnectTimeout)  # nothing was sent


class Client(_Base):
    """A synchronous client (thread-safe). ``transport``: an httpx transport (tests use ``httpx.MockTransport``)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT, stream_timeout: float | None = DEFAULT_STREAM_TIMEOUT,
                 max_retries: int = 0, headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, stream_timeout=stream_timeout,
                         max_retries=max_retries, headers=headers)
        self._http = httpx.Client(**self._http_options(), transport=transport)

    def request(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | None = None) -> httpx.Response:
        """The gateway's successful answer; an error answer or a transport failure raises a ``VGateError``."""
        for attempt in itertools.count():
            try:
                response = self._http.request(method, path, json=json, headers=headers, params=params)
            except httpx.TransportError as e:
                error: VGateError = self._failed_send(e, path)
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
            time.sleep(self._retry_delay(error, attempt))
        raise AssertionError("unreachable")

    def get(self, path: str, **kw: Any) -> Any:
        """GET a path and return the decoded JSON answer (an error answer raises)."""
        return self.request("GET", path, **kw).json()

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        """POST a JSON body to a path and return the decoded JSON answer (an error answer raises)."""
        return self.request("POST", path, json=json, **kw).json()

    @contextmanager
    def stream(self, method: str, path: str, *, json: Any = None,
               headers: Mapping[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed response, its status checked (an error answer raises before the block runs). A
        transport failure, also while the block reads, is a ``vgate.ConnectionError``: the caller
        decides whether to resume."""
        try:
            with self._http.stream(method, path, json=json, headers=headers,
                                   timeout=self._stream_timeout()) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as e:
            raise transport_error(e, f"{self.base_url}{path}") from e

    def programs(self) -> list[dict[str, Any]]:
        """The programs the gateway serves (``GET /predict/programs``)."""
        return self.get("/predict/programs")["programs"]

    def tools(self) -> list[dict[str, Any]]:
        """The gateway's tools, with their JSON schemas and availability (``GET /tools``)."""
        return self.get("/tools")["tools"]

    def call_tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        """Run one tool directly: ``{"name", "result", "latency_ms"}`` (``POST /tools/{name}``)."""
        return self.post(f"/tools/{name}", {"arguments": arguments})

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client. Use it from one event loop (httpx's pools belong to the loop they were made on)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT, stream_timeout: float | None = DEFAULT_STREAM_TIMEOUT,
                 max_retries: int = 0, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, stream_timeout=stream_timeout,
                         max_retries=max_retries, headers=headers)
        self._http = httpx.AsyncClient(**self._http_options(), transport=transport)

    async def request(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None,
                      params: Mapping[str, Any] | None = None) -> httpx.Response:
        """Send a request, resending it as the retry policy allows; return the successful response or raise its
        error."""
        for attempt in itertools.count():
            try:
                response = await self._http.request(method, path, json=json, headers=headers, params=params)
            except httpx.TransportError as e:
                error: VGateError = self._failed_send(e, path)
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
            await asyncio.sleep(self._retry_delay(error, attempt))
        raise AssertionError("unreachable")

    async def get(self, path: str, **kw: Any) -> Any:
        """GET a path and return the decoded JSON answer (an error answer raises)."""
        return (await self.request("GET", path, **kw)).json()

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        """POST a JSON body to a path and return the decoded JSON answer (an error answer raises)."""
        return (await self.request("POST", path, json=json, **kw)).json()

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, json: Any = None,
                     headers: Mapping[str, str] | None = None) -> AsyncIterator[httpx.Response]:
        """A streamed response, its status checked (an error answer raises before the block runs)."""
        try:
            async with self._http.stream(method, path, json=json, headers=headers,
                                         timeout=self._stream_timeout()) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as e:
            raise transport_error(e, f"{self.base_url}{path}") from e

    async def programs(self) -> list[dict[str, Any]]:
        """The gateway's named programs (GET /predict/programs)."""
        return (await self.get("/predict/programs"))["programs"]

    async def tools(self) -> list[dict[str, Any]]:
        """The gateway's tools with their schemas and availability (GET /tools)."""
        return (await self.get("/tools"))["tools"]

    async def call_tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        """Call a tool directly (POST /tools/{name}) and return {name, result, latency_ms}."""
        return await self.post(f"/tools/{name}", {"arguments": arguments})

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --- the defaults configure() sets -------------------------------------------------------------

_lock = threading.Lock()
_options: dict[str, Any] = {}
_default: Client | None = None
_default_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = weakref.WeakKeyDictionary()


def configure(base_url: str | None = None, api_key: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT,
              stream_timeout: float | None = DEFAULT_STREAM_TIMEOUT, max_retries: int = 0,
              headers: Mapping[str, str] | None = None) -> None:
    """Set what the default clients use: the gateway's ``base_url`` (default ``VGATE_BASE_URL``, else
    http://localhost:8080), ``api_key`` (default ``VGATE_API_KEY``), ``timeout`` (seconds for a
    request), ``stream_timeout`` (seconds of silence before a stream is resumed), ``max_retries``
    (of errors the gateway calls retryable, and 429s, waiting ``Retry-After``; 0 by default: the
    gateway already retries its upstream), extra ``headers``. Clients already made are not changed."""
    global _default
    with _lock:
        _options.clear()
        _options.update(base_url=base_url, api_key=api_key, timeout=timeout, stream_timeout=stream_timeout,
                        max_retries=max_retries, headers=dict(headers or {}))
        _default = None
        _default_async.clear()


def default_client() -> Client:
    """The client modules use when given none (made on first use, from ``configure``'s options)."""
    global _default
    with _lock:
        if _default is None:
            _default = Client(**_options)
        return _default


def default_async_client() -> AsyncClient:
    """The async client modules use when given none: one per event loop."""
    loop = asyncio.get_running_loop()
    with _lock:
        client = _default_async.get(loop)
        if client is None:
            client = _default_async[loop] = AsyncClient(**_options)
        return client


def sync_client(client: Client | AsyncClient | None, what: str) -> Client:
    """The sync client to use: the given one, else the default; an AsyncClient is a TypeError naming ``what``."""
    if client is None:
        return default_client()
    if isinstance(client, AsyncClient):
        raise TypeError(f"{what} was given an AsyncClient: call its async form (acall, abatch, astream, ...), "
                        "or give it a vgate.Client")
    return client


def async_client(client: Client | AsyncClient | None, what: str) -> AsyncClient:
    """The async client to use: the given one, else the default; a sync Client is a TypeError naming ``what``."""
    if client is None:
        return default_async_client()
    if isinstance(client, Client):
        raise TypeError(f"{what} was given a sync vgate.Client: call its sync form, or give it a vgate.AsyncClient")
    return client
