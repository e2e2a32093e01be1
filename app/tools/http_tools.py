"""Tools defined in configuration (``settings.http_tools``): one HTTP call each.

A call validates its arguments against the configured JSON schema, fills the URL template's
``{param}`` placeholders (URL-encoded), sends the other arguments as the query string (GET,
DELETE) or a JSON body (POST, PUT, PATCH), and returns the response: parsed JSON when the
content type says JSON, else text, capped at ``MAX_RESPONSE_BYTES`` (read as a stream, so a huge
response is never downloaded whole). A non-2xx answer is an error carrying the status, and for a
4xx the start of its body (it says what the call got wrong); a 5xx body is only logged.

The arguments come from a model, which prompt-injected content can steer, so a call can only go
where the operator said:

- only declared arguments (``parameters.properties``) are accepted: ``additionalProperties`` is
  forced to false, in the schema the model sees too;
- the template's own query is sent exactly as configured; arguments are appended after it, and
  an argument named like one of its keys is a configuration error;
- a path placeholder must leave its segment one plain segment: a value that, decoded however many
  times, is empty, ``.`` or ``..`` or holds ``/`` or ``\\`` is refused (422); query placeholders
  take any text;
- text that UTF-8 cannot encode (a lone surrogate, which JSON may spell ``"\\ud800"``) is
  refused (422) wherever it stands;
- placeholders never stand in the scheme, host, port or user info; with ``allowed_hosts`` the host
  must be in that list (checked at startup and before each request);
- redirects are never followed.

Configuration mistakes (bad schema, a placeholder the schema does not require or declare or in
the wrong place, a relative URL, a host outside ``allowed_hosts``) fail at startup.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

import httpx
import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app.errors import summarize_errors
from app.settings import HttpToolConfig
from app.tools.registry import ArgumentsError, Tool, ToolError, ToolRegistry, find_in_arguments

logger = structlog.get_logger(__name__)

PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_SNIPPET_CHARS = 500
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LONE_SURROGATE_MSG = (
    "holds a lone surrogate (such as \\ud800), which no url or JSON body can carry: send valid Unicode text"
)
PATH_SEGMENT_MSG = (
    "it fills a url path segment: it must not be empty, '.' or '..', nor hold '/', '\\' or control "
    "characters, percent-encoded or not"
)


def register_http_tools(
    registry: ToolRegistry,
    configs: list[HttpToolConfig],
    http_client: httpx.AsyncClient,
    *,
    default_timeout_s: float,
) -> None:
    """Register the HTTP tools of the configuration; a bad one fails at start."""
    for i, config in enumerate(configs):
        if config.name in registry:
            raise ValueError(f"http_tools[{i}]: the name {config.name!r} is already taken by another tool")
        registry.add(http_tool(config, http_client, default_timeout_s=default_timeout_s))


def http_tool(config: HttpToolConfig, http_client: httpx.AsyncClient, *, default_timeout_s: float) -> Tool:
    """A tool that makes the configured HTTP call, its URL template filled from the arguments."""
    name, schema = config.name, config.parameters
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"http tool {name!r}: invalid parameters schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise ValueError(f"http tool {name!r}: parameters must be a JSON schema of type 'object'")
    if "patternProperties" in schema:
        raise ValueError(f"http tool {name!r}: parameters.patternProperties is not supported: "
                         "declare every argument in parameters.properties")
    # Only declared arguments, whatever the operator wrote: an undeclared one would land in the
    # query or the body unchecked. The model and GET /tools are shown the same schema.
    schema = {**schema, "additionalProperties": False}
    url = _UrlTemplate.parse(name, config.url)
    not_required = sorted(url.placeholders - set(schema.get("required", [])))
    if not_required:
        raise ValueError(
            f"http tool {name!r}: url placeholder(s) {not_required} must be listed in parameters.required"
        )
    undeclared = sorted(url.placeholders - set(schema.get("properties", {})))
    if undeclared:  # additionalProperties is false: no call could ever pass them
        raise ValueError(
            f"http tool {name!r}: url placeholder(s) {undeclared} must be declared in parameters.properties "
            "(only declared arguments are accepted)"
        )
    allowed_hosts = None if config.allowed_hosts is None else {h.lower().rstrip(".") for h in config.allowed_hosts}
    if allowed_hosts is not None and url.host not in allowed_hosts:
        raise ValueError(f"http tool {name!r}: the url's host {url.host!r} is not in allowed_hosts")
    clashes = sorted(
        p for p in schema.get("properties", {}) if p not in url.placeholders and p.casefold() in url.query_keys
    )
    if clashes:
        raise ValueError(f"http tool {name!r}: argument(s) {clashes} would set the url's fixed query key(s)")
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    timeout = httpx.Timeout(config.timeout_s or default_timeout_s)

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        errors = [
            {"loc": [_printable(p) for p in e.absolute_path], "msg": e.message, "type": str(e.validator)}
            for e in validator.iter_errors(arguments)
        ]
        if not errors:  # before the path check: quoting such text for the url would raise
            errors = [{"loc": loc, "msg": LONE_SURROGATE_MSG, "type": "unicode"} for loc in _lone_surrogates(arguments)]
        if not errors:
            errors = [{"loc": [p], "msg": PATH_SEGMENT_MSG, "type": "path_segment"}
                      for p in url.unsafe_path_placeholders(arguments)]
        if errors:
            summary = summarize_errors(errors, root="(arguments)")
            raise ArgumentsError(f"invalid arguments for {name}: {summary}", errors)
        return arguments

    async def call(**arguments: Any) -> Any:
        rest = {k: v for k, v in arguments.items() if k not in url.placeholders}
        body: dict[str, Any] | None = None
        params: dict[str, Any] = {}
        if config.method in BODY_METHODS:
            body = rest
        else:
            params = {k: _query_value(v) for k, v in rest.items() if v is not None}
        target = url.fill(arguments, params)
        if allowed_hosts is not None and _host(target) not in allowed_hosts:  # cannot happen: the host is fixed
            raise ToolError(f"{name}: the host {target.host!r} is not in allowed_hosts", type="tool_failed")
        try:
            async with http_client.stream(  # a redirect is answered, never followed: it could lead anywhere
                config.method, target, json=body, headers=config.headers, timeout=timeout, follow_redirects=False
            ) as response:
                content, truncated = await _read_capped(response, MAX_RESPONSE_BYTES)
        except httpx.TimeoutException:
            raise ToolError(f"{name}: the service did not answer in time", type="tool_timeout") from None
        except httpx.HTTPError as exc:
            raise ToolError(
                f"{name}: could not reach the service ({type(exc).__name__})", type="tool_upstream_error"
            ) from None
        return _result(name, response, content, truncated)

    return Tool(
        name=name,
        description=config.description,
        parameters=schema,
        func=call,
        is_async=True,
        validate=validate,
        timeout_s=config.timeout_s,
    )


@dataclass(frozen=True, slots=True)
class _UrlTemplate:
    """A tool's url, split where placeholders may and may not stand."""

    origin: str  # scheme://[userinfo@]host[:port]: no placeholders
    host: str
    path: str  # placeholders fill whole or part of a segment, which must stay one plain segment
    query: str  # without '?'; placeholders only in values; sent as configured, arguments after it
    query_keys: frozenset[str]  # decoded, case-folded
    placeholders: frozenset[str]

    @classmethod
    def parse(cls, name: str, url: str) -> _UrlTemplate:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"http tool {name!r}: url must be absolute (http:// or https://)")
        if "#" in url:
            raise ValueError(f"http tool {name!r}: url must not have a fragment (it is never sent)")
        head, _, query = url.partition("?")
        path_start = head.find("/", head.index("://") + 3)
        origin, path = (head, "") if path_start < 0 else (head[:path_start], head[path_start:])
        if PLACEHOLDER_RE.search(origin):
            raise ValueError(f"http tool {name!r}: placeholders may not stand in the url's scheme, host, port "
                             "or user info, only in its path and query values")
        try:
            host = _host(httpx.URL(origin))
        except httpx.InvalidURL as exc:
            raise ValueError(f"http tool {name!r}: invalid url: {exc}") from None
        if not host:
            raise ValueError(f"http tool {name!r}: url must name a host")
        keys = [pair.partition("=")[0] for pair in query.split("&")] if query else []
        if any("{" in key or "}" in key for key in keys):
            raise ValueError(f"http tool {name!r}: placeholders in the query may only stand in values")
        return cls(origin, host, path, query, frozenset(unquote_plus(k).casefold() for k in keys),
                   frozenset(PLACEHOLDER_RE.findall(url)))

    def unsafe_path_placeholders(self, arguments: dict[str, Any]) -> list[str]:
        """The placeholders of the path segments that ``arguments`` would not leave plain."""
        bad = dict.fromkeys(
            p for segment in self.path.split("/") if PLACEHOLDER_RE.search(segment)
            if not _plain_segment(_fill(segment, arguments)) for p in PLACEHOLDER_RE.findall(segment)
        )
        return list(bad)

    def fill(self, arguments: dict[str, Any], params: dict[str, Any]) -> httpx.URL:
        """The url with ``arguments`` in its placeholders and ``params`` appended to its query (never
        merged into it: the template's own query goes out byte for byte as configured)."""
        query = [_fill(self.query, arguments)] if self.query else []
        if params:
            query.append(str(httpx.QueryParams(params)))
        return httpx.URL(self.origin + _fill(self.path, arguments) + ("?" + "&".join(query) if query else ""))


def _host(url: httpx.URL) -> str:
    return url.host.rstrip(".")  # httpx lower-cases it


def _fill(template: str, arguments: dict[str, Any]) -> str:
    return PLACEHOLDER_RE.sub(lambda m: quote(_text(arguments[m[1]]), safe=""), template)


def _lone_surrogates(arguments: dict[str, Any]) -> list[list[Any]]:
    """The locations of the strings, keys included, that UTF-8 cannot encode: lone surrogates,
    which JSON text may spell (``"\\ud800"``) but no url or request body can carry."""
    def bad(text: Any) -> bool:
        return isinstance(text, str) and not _encodable(text)

    return [[_printable(p) for p in loc] for loc, _ in find_in_arguments(arguments, bad, bad)]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(part: Any) -> Any:
    """A location part fit for an error body: a lone surrogate in a key becomes its escape."""
    return part.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(part, str) else part


def _plain_segment(segment: str) -> bool:
    """False for a path segment that some server could read as empty, '.', '..' or as several
    segments. Judged on its text decoded as often as it decodes (``%252e`` is '.' to a server that
    decodes twice) and NFKC-normalised (fullwidth '．' and '／'); a ``;`` starts path parameters
    (Tomcat reads ``..;x`` as ``..``)."""
    text = segment
    while (decoded := unquote(text)) != text:  # each round shortens the text: it ends
        text = decoded
    text = unicodedata.normalize("NFKC", text)
    if any(c in "/\\" or c < " " or c == "\x7f" for c in text):
        return False
    return text.split(";", 1)[0].strip().strip(".") != ""


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break  # leaving the stream closes the connection: the rest is never read
    return b"".join(chunks)[:limit], size > limit


def _result(name: str, response: httpx.Response, content: bytes, truncated: bool) -> Any:
    text = _decode(content, response)
    if not response.is_success:
        snippet = text.strip()[:MAX_ERROR_SNIPPET_CHARS]
        message = f"{name}: the service answered HTTP {response.status_code}"
        if response.status_code >= 500:
            # a server error's body may name internal hosts, paths or stack frames: for the
            # operator's log, never for the caller, the SSE stream or the model's context
            if snippet:
                logger.warning("tool_upstream_error_body", tool=name, upstream_status=response.status_code,
                               body=snippet)
        elif snippet:  # a 4xx body says what was wrong with the call: the model needs it to correct it
            message += f": {snippet}"
        raise ToolError(message, type="tool_upstream_error", upstream_status=response.status_code)
    if not content:
        return f"(empty response, HTTP {response.status_code})"
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not truncated and (media_type == "application/json" or media_type.endswith("+json")):
        try:
            return json.loads(content)
        except ValueError:
            pass  # mislabelled: hand over the text
    if truncated:
        text += f"\n[truncated: the response exceeded {MAX_RESPONSE_BYTES} bytes]"
    return text


def _decode(content: bytes, response: httpx.Response) -> str:
    try:
        return content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return content.decode("utf-8", errors="replace")


def _text(value: Any) -> str:
    """A placeholder value as text: JSON's spelling for true/false/null, compact JSON for structures."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _query_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_text(v) for v in value]  # repeated parameter: ?tag=a&tag=b
    return _text(value)
