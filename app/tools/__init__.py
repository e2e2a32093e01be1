"""Tools: a registry of callable tools, the executor that runs them, builtins and configured HTTP tools.

The app builds one executor per instance in its lifespan::

    tools_http = httpx.AsyncClient()  # no default credentials: tools call arbitrary URLs
    app.state.tools = build_tool_executor(settings, metrics, tools_http)
    ...
    app.state.tools.close(); await tools_http.aclose()
"""

from __future__ import annotations

import httpx

from app.metrics import Metrics
from app.settings import Settings
from app.tools.builtin import register_builtins
from app.tools.executor import ToolExecutor, ToolResult
from app.tools.http_tools import register_http_tools
from app.tools.registry import Tool, ToolError, ToolRegistry

__all__ = ["Tool", "ToolError", "ToolExecutor", "ToolRegistry", "ToolResult", "build_tool_executor"]

_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")


def build_tool_executor(settings: Settings, metrics: Metrics, http_client: httpx.AsyncClient) -> ToolExecutor:
    """A fresh registry with the builtins and ``settings.http_tools``, and its executor.

    Raises ``ValueError`` at startup for a configuration mistake: an HTTP tool whose name clashes
    with another tool, a bad schema or URL template, or an ``http_client`` carrying default
    credentials (they would be sent to every tool's URL; give tools a client of their own).
    """
    leaked = [h for h in _CREDENTIAL_HEADERS if h in http_client.headers]
    if leaked:
        raise ValueError(
            f"the tools' HTTP client has default {', '.join(leaked)} header(s) that every tool call would "
            "send to third-party URLs; give the tools a client without default credentials"
        )
    registry = ToolRegistry()
    register_builtins(registry, web_search_url=settings.web_search_url, http_client=http_client)
    register_http_tools(registry, settings.http_tools, http_client, default_timeout_s=settings.tool_timeout_s)
    return ToolExecutor(registry, settings, metrics)
