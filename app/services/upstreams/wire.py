"""A model call's bytes to and from one upstream, as cheaply as Python does them: aiohttp itself.

The passthrough relays bytes and needs nothing of an HTTP client's conveniences; httpx's request and
response objects, URL merging, redirect/auth/cookie handling cost over a third of the gateway's CPU
per passthrough call (py-spy, ``benchmarks/passthrough.py``). So a call goes straight to the aiohttp
session under the httpx-aiohttp transport (one connection pool for everything), with aiohttp's errors
mapped to httpx's as that transport maps them (``lm.errors.dropped`` tells a drop from a timeout).
Given another httpx transport (tests' stand-ins for an upstream), the same interface runs over it
(its responses must stream: a wrapper over a real transport, not ``httpx.MockTransport``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions


class WireResponse:
    """An upstream's answer, streaming: ``read()`` it whole or iterate ``chunks()``, then ``close()``."""

    __slots__ = ("status", "content_type", "retry_after", "_aio", "_httpx")

    def __init__(self, status: int, headers, aio: aiohttp.ClientResponse | None = None,
                 hx: httpx.Response | None = None) -> None:
        self.status = status
        self.content_type: str = headers.get("content-type", "application/json")
        self.retry_after: str | None = headers.get("retry-after")
        self._aio = aio
        self._httpx = hx

    async def read(self) -> bytes:
        """The whole response body."""
        if self._aio is not None:
            with _mapped():
                return await self._aio.read()
        assert self._httpx is not None
        return await self._httpx.aread()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives, chunk by chunk, undecoded."""
        if self._aio is not None:
            with _mapped():
                async for chunk in self._aio.content.iter_any():
                    yield chunk
            return
        assert self._httpx is not None
        if self._httpx.is_stream_consumed:  # a transport that answered with the body read (httpx.MockTransport)
            if self._httpx.content:
                yield self._httpx.content
            return
        async for chunk in self._httpx.aiter_raw():
            yield chunk

    async def close(self) -> None:
        """Done with it: a connection whose answer was not read to the end is closed (so vLLM aborts
        the sequence), else it goes back to the pool."""
        if self._aio is not None:
            if self._aio.content.at_eof():
                self._aio.release()
            else:
                self._aio.close()
        elif self._httpx is not None:
            await self._httpx.aclose()


class UpstreamTransport(AiohttpTransport):
    """httpx-aiohttp's transport, with every aiohttp error an httpx error: its map leaves some out
    (``ClientResponseError`` from a server that does not speak HTTP, a TLS port given as http://), and
    those would reach the caller as a 500 and pass the breaker by."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request; an aiohttp error becomes an httpx transport error, as the callers expect."""
        try:
            return await super().handle_async_request(request)
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        with map_aiohttp_exceptions():
            yield
    except aiohttp.ClientError as exc:  # what the map leaves out (see UpstreamTransport); the map goes first
        raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc


class Wire:
    """Raw POSTs to one upstream (aiohttp directly when possible, else httpx), bodies relayed as bytes."""
    def __init__(self, base_url: str, headers: dict[str, str], transport: httpx.AsyncBaseTransport) -> None:
        self.base_url = base_url
        self.headers = headers
        self.transport = transport
        self._native = isinstance(transport, AiohttpTransport)
        # aiohttp asks for gzip by default; the bytes are relayed as they come, so never compressed
        self.headers = {**headers, "accept-encoding": "identity"}
        self._urls: dict[str, str] = {}

    def _session(self) -> aiohttp.ClientSession:
        t = self.transport
        assert isinstance(t, AiohttpTransport)
        if not isinstance(t.client, aiohttp.ClientSession):
            t.client = t.get_client()  # as the transport does on its first request: the pool is shared
        return t.client

    async def post(self, path: str, content: bytes, headers: dict[str, str], timeout: httpx.Timeout) -> WireResponse:
        """POST bytes to a path on the upstream and return the response unread."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self.base_url + path
        merged = {**self.headers, **headers}
        if self._native:
            with _mapped():
                resp = await self._session().post(
                    url, data=content, headers=merged, allow_redirects=False, auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read,
                                                  connect=timeout.pool))
            return WireResponse(resp.status, resp.headers, aio=resp)
        request = httpx.Request("POST", url, headers=merged, content=content,
                                extensions={"timeout": timeout.as_dict()})
        hx = await self.transport.handle_async_request(request)
        return WireResponse(hx.status_code, hx.headers, hx=hx)
