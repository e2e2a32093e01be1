"""The OpenAI-compatible passthrough, by concern: ``request`` (read, guard, change only what must
change), ``relay`` (the answer's bytes as they come, read for the books), ``service``."""

from app.services.passthrough.request import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint
from app.services.passthrough.service import Answer, PassthroughService

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "Answer", "Endpoint", "PassthroughService"]
