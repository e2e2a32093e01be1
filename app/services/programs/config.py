"""A prediction's settings: the module that runs it and the sampling parameters sent to vLLM."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Module = Literal["predict", "chain_of_thought", "majority"]


class PredictConfig(BaseModel):
    """Sampling settings passed to vLLM. Unknown keys are refused, never dropped silently."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=131072)
    min_tokens: int | None = Field(None, ge=0, le=131072)  # vLLM: no stop before this many tokens
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    chat_template_kwargs: dict[str, Any] | None = None  # e.g. Qwen3 {"enable_thinking": false}
    # Not sent upstream as such (see ``upstream_params``):
    repair: int | None = Field(None, ge=0, le=2, description="retries with the validation errors shown to the "
                               "model when a reply does not match the signature (default 1)")
    n: int | None = Field(None, ge=1, le=16, description="samples to vote over (module 'majority', default 5; "
                          "or chain_of_thought with n > 1)")

    def merged(self, override: PredictConfig | None) -> PredictConfig:
        """These settings with the fields the override sets replacing them."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))

    def upstream_params(self) -> dict[str, Any]:
        """What goes to vLLM as sampling parameters: everything but the gateway's own keys."""
        return self.model_dump(exclude_none=True, exclude={"repair", "n"})
