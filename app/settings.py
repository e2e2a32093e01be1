"""Gateway configuration.

Every field can be set from the environment with the ``VGATE_`` prefix (nested
fields with ``__``, e.g. ``VGATE_PRICES='{"my-model": {"input_per_1k": 0, "output_per_1k": 0}}'``)
or from a TOML file named by ``VGATE_CONFIG_FILE``. Environment variables win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PACKAGE_DIR = Path(__file__).resolve().parent


class Price(BaseModel):
    """USD per 1,000 tokens."""

    input_per_1k: float = Field(0.01, ge=0)
    output_per_1k: float = Field(0.03, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The USD cost of a call with these token counts."""
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000.0


class HttpToolConfig(BaseModel):
    """A tool defined in configuration: an HTTP call described by a URL template."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str  # e.g. "https://api.example.com/weather?city={city}"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = None
    # Host names the tool may call; the url's host must be one of them (checked at start and before
    # every request). None: no list.
    allowed_hosts: list[str] | None = None


class UpstreamConfig(BaseModel):
    """One vLLM server. Its models are discovered from its /v1/models."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key (apikey, wieght) fails at start

    url: str
    api_key: SecretStr | None = None
    # Share of the load relative to the others (a server with twice the GPUs: 2).
    weight: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False)
    name: str | None = Field(None, min_length=1, max_length=64)  # in metrics and logs; default: the URL

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.rstrip("/")
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError(f"an upstream URL is http:// or https:// and a host, got {v!r}")
        return v


# admin: /admin (keys, usage) and /metrics; metrics: /metrics only (a scraper's key)
KeyScope = Literal["predict", "agent", "tools", "openai", "admin", "metrics"]
KEY_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"  # an id is in logs and errors, never the key


class KeyLimits(BaseModel):
    """A key's limits (None: none). Requests and tokens per minute are sliding 60 s windows; budgets
    are in USD from the gateway's cost accounting (prices), per UTC day and month."""

    model_config = ConfigDict(extra="forbid")  # a misspelt limit fails, not silently unlimited

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    budget_usd_daily: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_usd_monthly: float | None = Field(None, ge=0, allow_inf_nan=False)


class KeyPolicy(KeyLimits):
    """What a key may do, and its limits: the same fields in the configuration and in /admin/keys."""

    alias: str | None = Field(None, max_length=64)
    scopes: list[KeyScope] = Field(default_factory=lambda: ["predict", "agent", "tools", "openai"])
    models: list[str] | None = None  # None: every model
    tools: list[str] | None = None  # None: every tool (POST /tools/{name} and the agent's)
    # X-Vgate-Priority may raise this key's requests (a batch route's to interactive); any key may lower.
    priority_raise: bool = False


class ApiKeyConfig(KeyPolicy):
    """A caller's key, from configuration (``[[api_keys]]`` in the TOML file, or VGATE_API_KEYS)."""

    id: str = Field(pattern=KEY_ID_PATTERN)
    key: SecretStr | None = None  # the key itself (hashed at start) ...
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # ... or only its SHA-256, hex

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"api key {self.id!r}: give exactly one of key or key_sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError(f"api key {self.id!r}: a key of at least 16 characters")
        return self


Priority = Literal["interactive", "batch"]
PRIORITY_ROUTES = ("predict", "predict_batch", "agent", "openai", "evaluate", "optimize")


class Settings(BaseSettings):
    """The gateway's settings, from VGATE_* environment variables and the TOML file of VGATE_CONFIG_FILE."""
    model_config = SettingsConfigDict(
        env_prefix="VGATE_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    # --- serving ---------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # After SIGTERM: requests and agent streams in flight have this long to finish; then agent runs
    # are stopped (their streams end with a shutting_down event) and the process exits.
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Worker processes of `vgate serve` (--workers); more than one needs redis_url (shared state).
    # Each worker routes on its own view of the upstreams, so max_inflight_per_upstream is shared
    # out between them (1/N each, rounded up); /metrics adds up all the workers.
    workers: int = Field(1, ge=1, le=64)
    # Request bodies above this are refused with a 413 before anything reaches the upstream.
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    # --- upstreams (vLLM OpenAI-compatible servers) ------------------------
    # Several: VGATE_UPSTREAMS='[{"url": "http://a:8000"}, {"url": "http://b:8000", "weight": 2}]',
    # [[upstreams]] in the TOML file, or `vgate serve --upstream URL` repeated. Empty: the one below.
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    upstream_url: str = "http://127.0.0.1:8000"
    upstream_api_key: SecretStr | None = None
    # Model used when a request names none. Empty: the first model the upstream lists.
    default_model: str | None = None

    connect_timeout_s: float = Field(5.0, gt=0)
    # Longest wait for the next byte (first token included: a busy vLLM queues requests).
    read_timeout_s: float = Field(120.0, gt=0)
    # Total deadline for one upstream call, retries and backoff included.
    request_timeout_s: float = Field(300.0, gt=0)

    max_retries: int = Field(3, ge=0, le=10)  # retries after the first attempt
    retry_backoff_initial_s: float = Field(0.2, ge=0)
    retry_backoff_max_s: float = Field(10.0, ge=0)

    # Cap on requests in flight to one upstream. vLLM's default max_num_seqs is 256;
    # staying at or above it keeps continuous batching full. With N workers each gets 1/N of it.
    max_inflight_per_upstream: int = Field(256, ge=1)
    # Calls waiting for a slot, per model; beyond it (or when a call's deadline cannot be met in the
    # queue) the answer is a 429 upstream_overloaded at once. Default: max_batch_size, so a full
    # /predict batch fits.
    max_queued_per_model: int | None = Field(None, ge=0)
    max_queued_per_upstream: int | None = Field(None, ge=0)  # the name before several upstreams (deprecated)
    # Pooled keep-alive connections (>= in-flight cap, so the pool never queues).
    max_connections: int = Field(512, ge=1)
    # How long the upstream's model list is trusted before it is fetched again (the default model and
    # the check that a requested model is served follow it).
    models_refresh_s: float = Field(30.0, gt=0)

    # --- routing, health, backpressure, priorities -------------------------
    # load: power of two choices on requests per weight; round_robin and random only to compare with.
    routing: Literal["load", "round_robin", "random"] = "load"
    # Requests sharing a prefix go back to the upstream that served it (vLLM's prefix cache) while it can
    # take them; this many prefixes are remembered.
    prefix_affinity: bool = True
    prefix_affinity_entries: int = Field(10_000, ge=1)
    # An upstream is saturated when vLLM's waiting queue reaches this, or its KV-cache use this share,
    # or its metrics are older than metrics_stale_s: interactive calls then get a 429 at once.
    saturation_queue_threshold: float = Field(8, gt=0)
    saturation_kv_threshold: float = Field(0.9, gt=0, le=1)
    metrics_scrape_interval_s: float = Field(1.0, ge=0.1, le=10)
    metrics_stale_s: float = Field(5.0, gt=0)
    health_check_interval_s: float = Field(5.0, gt=0)
    # Consecutive 5xx answers or timeouts that open an upstream's circuit breaker (a connect failure
    # opens it at once); it stays open this long, then one probe decides (twice as long if it fails).
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(5.0, gt=0, le=60)
    # Share of the slots that waiting batch calls get even while interactive calls wait.
    batch_min_share: float = Field(0.1, ge=0, le=1)
    # While interactive calls are arriving, the most of the slots batch calls may hold (1: all): vLLM's
    # batch and prefill queue stay short for the interactive calls, at some of the batch's speed
    # (benchmarks/RESULTS.md). A batch alone uses every slot.
    batch_max_share: float = Field(0.5, gt=0, le=1)
    # Priority class per route; a request's X-Vgate-Priority header may lower it, and raise it only
    # if allow_priority_raise (every caller) or the API key has priority_raise.
    priorities: dict[str, Priority] = Field(default_factory=lambda: {
        "predict": "interactive", "predict_batch": "batch", "agent": "interactive", "openai": "interactive",
        "evaluate": "batch", "optimize": "batch"})
    allow_priority_raise: bool = False
    # vLLM >= 0.12 silently ignores guided_json/guided_regex/guided_choice/guided_grammar; the
    # passthrough refuses them with a 400 naming the replacement, or (true) rewrites them into
    # structured_outputs.
    translate_guided_params: bool = False
    # Client request headers the passthrough forwards to the upstream (lower-case names); none by
    # default: the upstream's credentials and request id are the gateway's.
    passthrough_forward_headers: list[str] = Field(default_factory=list)

    # --- access ----------------------------------------------------------
    # Empty: the gateway is open to anyone who reaches it (it says so at start).
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    # /metrics without a key even when keys are configured (Prometheus inside the same network).
    metrics_public: bool = False
    # A key found (or not) is trusted this long per process: a key revoked through /admin/keys on one
    # replica is refused by every other within it.
    key_cache_s: float = Field(0.5, ge=0, le=60)
    # When the store (Redis) cannot be reached: false refuses calls of keys with limits (503, fail
    # closed); true lets them through uncounted (fail open).
    limits_fail_open: bool = False
    # A key with tpm or a budget: its passthrough calls that name no max_tokens get this many (so that
    # the reservation, prompt bytes / 3 plus max_tokens, bounds what they spend).
    limits_default_completion_tokens: int = Field(1024, ge=1)
    # Per-key usage metrics carry the key's alias (or id); off: one series for all keys.
    metrics_key_alias: bool = False

    # --- shared state -----------------------------------------------------
    # Redis for state shared by workers and replicas: limits, keys made through /admin/keys, usage,
    # agent sessions and run event logs. Empty: in this process's memory.
    redis_url: SecretStr | None = None
    # Per command (a stalled Redis never hangs a request); not too tight: a busy event loop's lag counts.
    redis_timeout_s: float = Field(1.0, gt=0, le=30)

    # --- cost ------------------------------------------------------------
    prices: dict[str, Price] = Field(default_factory=dict)
    default_price: Price = Field(default_factory=Price)

    # --- /predict ---------------------------------------------------------
    predict_default_max_tokens: int = Field(512, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    programs_dir: Path = PACKAGE_DIR / "programs"
    # Where /optimize saves new program versions (name@3.json) when Redis is not configured; they are
    # loaded from there at start, beside programs_dir's. Default: programs_dir, unless that is the
    # package's own (never written into): then $XDG_DATA_HOME/vgate/programs (~/.local/share/...).
    program_versions_dir: Path | None = None

    # --- /evaluate and /optimize --------------------------------------------
    # Examples in one /evaluate dataset (and in each of /optimize's trainset and valset); more is a 422.
    evaluate_max_examples: int = Field(1000, ge=1)
    # Past this many examples (/optimize: trainset + valset) the request runs as a job (202 + job_id).
    evaluate_job_threshold: int = Field(50, ge=0)

    # --- tools and agent --------------------------------------------------
    tool_timeout_s: float = Field(10.0, gt=0)
    max_concurrent_tools: int = Field(16, ge=1)
    web_search_url: str | None = None  # a SearxNG instance, e.g. http://127.0.0.1:8888
    http_tools: list[HttpToolConfig] = Field(default_factory=list)
    agent_max_steps: int = Field(8, ge=1)
    agent_max_steps_limit: int = Field(32, ge=1)
    agent_default_max_tokens: int = Field(1024, ge=1)
    agent_session_ttl_s: float = Field(3600.0, gt=0)
    agent_max_sessions: int = Field(1000, ge=1)
    # Each session's kept history is cut (at a turn's start) to fit this many bytes of JSON.
    agent_session_max_bytes: int = Field(256 * 1024, ge=1024)
    agent_resume_ttl_s: float = Field(300.0, gt=0)  # finished runs stay resumable this long ...
    agent_max_retained_runs: int = Field(256, ge=1)  # ... up to this many (oldest finished dropped first)
    agent_max_concurrent_runs: int = Field(256, ge=1)  # more get a 503 with Retry-After
    # Tool calls run per model turn; the model gets an error result for each call beyond it.
    agent_max_tool_calls_per_turn: int = Field(16, ge=1)
    # How long a run outlives its last disconnected client (a reconnect with Last-Event-ID within it
    # continues live). 0: cancel at once, freeing vLLM's sequence and running tools.
    agent_disconnect_grace_s: float = Field(0.0, ge=0)
    sse_heartbeat_s: float = Field(15.0, gt=0)

    # --- jobs (long /evaluate and /optimize runs) -------------------------
    job_ttl_s: float = Field(3600.0, gt=0)  # a finished job stays readable this long ...
    jobs_max_kept: int = Field(1000, ge=1)  # ... at most this many in memory (oldest finished dropped first)
    jobs_max_running: int = Field(64, ge=1)  # per replica; more get a 503 with Retry-After
    cors_origins: list[str] = Field(default_factory=list)

    # --- observability ----------------------------------------------------
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    log_prompts: bool = False  # log prompts and completions (off: they may hold personal data)

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return UpstreamConfig._http_url(v)

    @field_validator("passthrough_forward_headers")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        refused = {"authorization", "host", "content-length", "content-type", "x-request-id", "transfer-encoding",
                   "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                   "proxy-connection", "accept-encoding", "cookie"}
        names = [h.strip().lower() for h in v]
        bad = sorted(set(names) & refused)
        if bad:
            raise ValueError(f"the gateway sets these headers itself: {bad}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that contradict each other fail at start, naming both values."""
        pairs = [
            ("agent_max_steps", self.agent_max_steps, "<=", "agent_max_steps_limit", self.agent_max_steps_limit),
            ("retry_backoff_initial_s", self.retry_backoff_initial_s, "<=", "retry_backoff_max_s",
             self.retry_backoff_max_s),
            ("max_inflight_per_upstream", self.max_inflight_per_upstream, "<=", "max_connections",
             self.max_connections),
            ("batch_min_share", self.batch_min_share, "<=", "batch_max_share", self.batch_max_share),
            # a scrape may be late once without the upstream reading as saturated
            ("2 x metrics_scrape_interval_s", 2 * self.metrics_scrape_interval_s, "<=", "metrics_stale_s",
             self.metrics_stale_s),
        ]
        problems = [f"{a}={va} must be {op} {b}={vb}" for a, va, op, b, vb in pairs if va > vb]
        if problems:
            raise ValueError("contradictory settings: " + "; ".join(problems))
        if self.max_queued_per_model is None:
            self.max_queued_per_model = (self.max_queued_per_upstream if self.max_queued_per_upstream is not None
                                         else self.max_batch_size)
        unknown = set(self.priorities) - set(PRIORITY_ROUTES)
        if unknown:
            raise ValueError(f"priorities: unknown route(s) {sorted(unknown)}; known: {list(PRIORITY_ROUTES)}")
        self.priorities = {**Settings.model_fields["priorities"].default_factory(), **self.priorities}
        if self.upstreams and self.upstream_api_key is not None:
            raise ValueError("upstream_api_key applies to upstream_url alone: with upstreams, give each its api_key")
        ids = [k.id for k in self.api_keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"api_keys: each id may appear once, got {ids}")
        urls = [u.url for u in self.upstream_configs()]
        names = [u.name or u.url for u in self.upstream_configs()]
        if len(set(urls)) != len(urls) or len(set(names)) != len(names):
            raise ValueError(f"upstreams: each URL and name may appear once, got {urls}")
        return self

    def upstream_configs(self) -> list[UpstreamConfig]:
        """The upstreams: the list, or the single upstream_url."""
        return self.upstreams or [UpstreamConfig(url=self.upstream_url, api_key=self.upstream_api_key)]

    @property
    def versions_dir(self) -> Path:
        """Where saved program versions go (``program_versions_dir``, or its default)."""
        if self.program_versions_dir is not None:
            return self.program_versions_dir
        if self.programs_dir.resolve() != (PACKAGE_DIR / "programs").resolve():
            return self.programs_dir
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data) / "vgate" / "programs"

    def priority_for(self, route: str) -> Priority:
        """The priority class of a route (interactive unless configured)."""
        return self.priorities.get(route, "interactive")

    def price_for(self, model: str) -> Price:
        """The price of a model: its entry in ``prices``, else ``default_price``."""
        return self.prices.get(model, self.default_price)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where settings come from, first wins: arguments, environment, .env, the TOML file, secrets."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("VGATE_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        sources.append(file_secret_settings)
        return tuple(sources)
