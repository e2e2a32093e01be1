"""A validated agent request, ready to run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.services.programs import PredictConfig

Mode = Literal["auto", "native", "react"]


@dataclass
class AgentTask:
    """A validated agent request, ready to run."""

    messages: list[dict[str, Any]]  # the conversation so far, system message excluded
    instructions: str | None
    tool_names: list[str]
    max_steps: int
    model: str | None
    config: PredictConfig
    tool_choice: Any = None  # first step only
    session_id: str | None = None
    mode: Mode = "auto"
    owner: str | None = None  # the id of the API key that started it (None: no keys configured)

    @property
    def session_key(self) -> str | None:
        """The session's key in the store: per API key, so one key cannot read another's sessions."""
        if self.session_id is None:
            return None
        return self.session_id if self.owner is None else f"{self.owner}/{self.session_id}"

    def forced_tool(self, step: int) -> str | bool:
        """The tool name the first step must call, True for any tool, False when not forced."""
        if step != 1 or self.tool_choice is None:
            return False
        if self.tool_choice == "required":
            return True
        if isinstance(self.tool_choice, dict):
            return (self.tool_choice.get("function") or {}).get("name") or True
        return False
