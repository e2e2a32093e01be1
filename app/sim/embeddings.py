"""POST /v1/embeddings, as vLLM 0.33 serves a pooling model: deterministic unit vectors.

`input` is a string, a list of strings, a list of token ids or a list of such lists; each input
is one engine sequence that only prefills (the latency model charges its prompt, nothing more).
A vector depends on the text alone: the sum of one pseudo-random Gaussian direction per word
(lower-cased) and one for the whole text (weighted by sqrt(words)), normalised. The same text
always gives the same vector, texts that share words point closer together, and any two
different texts differ. Values are float32; `encoding_format: "base64"` sends their little-endian
bytes in base64 (as OpenAI and vLLM do; the openai SDK asks for it by default). `dimensions`
(1 to SimConfig.embedding_dim) keeps the leading components, renormalised, like a matryoshka
model.

Answer: {"id": "embd-…", "object": "list", "created", "model", "data": [{"index", "object":
"embedding", "embedding"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0}}.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import re
import struct
from typing import Any

from app.sim.completion import Completion
from app.sim.job import Call, Job
from app.sim.prefix_cache import block_hashes
from app.sim.protocol import RequestError, dumps, load_body, parse_prompts

_WORD_RE = re.compile(r"\w+")


@functools.lru_cache(maxsize=16384)
def _direction(key: str, dim: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dim))


def embed(text: str, dim: int) -> list[float]:
    """The unit vector of `text` (float32 values), `dim` components."""
    words = _WORD_RE.findall(text.lower())
    weight = math.sqrt(max(1, len(words)))
    acc = [weight * x for x in _direction(f"\0text\0{text}", dim)]
    for word in words:
        for i, x in enumerate(_direction(word, dim)):
            acc[i] += x
    return _unit(acc)


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    scaled = [x / norm for x in vector]
    return list(struct.unpack(f"<{len(scaled)}f", struct.pack(f"<{len(scaled)}f", *scaled)))


class EmbeddingsWriter:
    """Renders an embeddings response: one deterministic vector per input text."""
    def __init__(self, response_id: str, created: int, model: str, texts: list[str], dim: int,
                 dimensions: int | None, encoding: str) -> None:
        self.response_id, self.created, self.model = response_id, created, model
        self.texts, self.dim, self.dimensions, self.encoding = texts, dim, dimensions, encoding

    def vector(self, text: str) -> Any:
        """The text's vector, cut to ``dimensions`` and renormalized when asked, as floats or base64."""
        vector = embed(text, self.dim)
        if self.dimensions is not None and self.dimensions < self.dim:
            vector = _unit(vector[: self.dimensions])
        if self.encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The /v1/embeddings response body."""
        data = [{"index": i, "object": "embedding", "embedding": self.vector(text)}
                for i, text in enumerate(self.texts)]
        return dumps({"id": self.response_id, "object": "list", "created": self.created, "model": self.model,
                      "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                                              "completion_tokens": 0}}).encode()


def _dimensions(body: dict[str, Any], dim: int) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= dim:
        raise RequestError(f"`dimensions` must be an integer from 1 to {dim}, got {value!r}", param="dimensions")
    return value


def embeddings_job(call: Call) -> Job:
    """A /v1/embeddings request as an engine job."""
    config = call.config
    body = load_body(call.raw, config)
    prompts = parse_prompts(body, "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(f"`encoding_format` must be 'float' or 'base64', got {encoding!r}",
                           param="encoding_format")
    dimensions = _dimensions(body, config.embedding_dim)
    completions = []
    for _, tokens in prompts:
        if len(tokens) > config.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
                f"{len(tokens)} tokens in the input for embedding generation. Please reduce the length of the "
                "input.", param="input")
        completions.append(Completion(len(tokens), block_hashes(tokens), [], [], "stop"))
    writer = EmbeddingsWriter(call.response_id("embd-"), call.created, config.model, [text for text, _ in prompts],
                              config.embedding_dim, dimensions, encoding)
    return Job(completions, writer, generates=False)
