"""Typed settings, layered from YAML files and ``VOICEAGENT_*`` environment variables.

Layers, later wins: ``configs/default.yaml`` → the file named by ``--config`` or
``VOICEAGENT_CONFIG`` → environment variables (``VOICEAGENT_SERVER__PORT=9000``; ``__`` nests).
Every leaf remembers which layer set it, so a bad value is reported with the file (or variable)
it came from instead of a bare pydantic traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from voiceagent.admin.settings import AdminSettings
from voiceagent.auth.settings import SecuritySettings
from voiceagent.engines.settings import EngineSettings
from voiceagent.jobs.settings import JobsSettings
from voiceagent.knowledge.settings import KnowledgeSettings
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.transport.settings import TransportSettings

ENV_PREFIX = "VOICEAGENT_"
CONFIG_ENV_VAR = "VOICEAGENT_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    # Open calls and streams get this long to finish after SIGTERM before they are cut.
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Reverse proxies (addresses, or "*") whose X-Forwarded-For/-Proto are believed: the client's
    # address then counts for the login limits and the audit log. Empty: no header is believed, and
    # behind a proxy every login counts against the proxy's one address.
    trusted_proxies: list[str] = []


class StoreSettings(_Section):
    url: str = "sqlite+aiosqlite:///.data/voiceagent.db"
    connect_timeout_s: float = Field(5.0, gt=0)
    pool_size: int = Field(5, ge=1)
    migrate_on_start: bool = True
    echo_sql: bool = False

    @field_validator("url")
    @classmethod
    def _supported_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with 'sqlite+aiosqlite://' (embedded) or "
                "'postgresql+asyncpg://' (shared by several nodes)"
            )
        return url


class LocalBrokerSettings(_Section):
    """The RocketMQ this machine runs itself (`voiceagent broker start`), for dev and tests."""

    version: str = "5.3.3"
    cache_dir: str = "~/.cache/voiceagent/rocketmq"  # server jars from Maven Central, kept between runs
    data_dir: str = ".run/rocketmq"  # store, configs, logs and pid files of one broker
    broker_port: int = Field(10911, ge=1024, le=65533)  # also uses port-2 and port+1
    proxy_remoting_port: int = Field(18080, ge=1024, le=65535)
    namesrv_heap_mb: int = Field(256, ge=64)
    broker_heap_mb: int = Field(768, ge=256)
    start_timeout_s: float = Field(180.0, gt=0)


class RocketMQSettings(_Section):
    # The gRPC proxy endpoint ("host:port"), which is all a 5.x client talks to.
    endpoints: str = "127.0.0.1:8081"
    namesrv: str = "127.0.0.1:9876"
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    request_timeout_s: float = Field(3.0, gt=0)
    local: LocalBrokerSettings = LocalBrokerSettings()


class TopicSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,127}$")
    # RocketMQ 5 checks each message against its topic's type: delayed sends need DELAY or MIXED.
    message_type: Literal["NORMAL", "DELAY", "FIFO", "MIXED"] = "NORMAL"


def _default_topics() -> dict[str, TopicSettings]:
    return {
        "outreach": TopicSettings(name="voiceagent-outreach", message_type="MIXED"),
        "knowledge": TopicSettings(name="voiceagent-knowledge", message_type="NORMAL"),
        "dead_letter": TopicSettings(name="voiceagent-dead-letter", message_type="NORMAL"),
        "jobs": TopicSettings(name="voiceagent-jobs", message_type="MIXED"),
    }


REQUIRED_TOPICS = ("outreach", "knowledge", "dead_letter", "jobs")


class EventSettings(_Section):
    # "inprocess" keeps `make run` free of Java; "rocketmq" is what several nodes share.
    backend: Literal["inprocess", "rocketmq"] = "inprocess"
    # Logical name -> broker topic. Every topic the project uses is declared here and only here.
    topics: dict[str, TopicSettings] = Field(default_factory=_default_topics)
    # A publish that meets a down broker is retried with exponential backoff this many times.
    publish_retries: int = Field(5, ge=0)
    publish_backoff_s: float = Field(0.2, gt=0)
    publish_backoff_max_s: float = Field(5.0, gt=0)
    rocketmq: RocketMQSettings = RocketMQSettings()

    @field_validator("topics")
    @classmethod
    def _required_topics(cls, topics: dict[str, TopicSettings]) -> dict[str, TopicSettings]:
        missing = [name for name in REQUIRED_TOPICS if name not in topics]
        if missing:
            raise ValueError(f"missing topic(s): {', '.join(missing)}")
        return topics


class LocalLLMSettings(_Section):
    """The OpenAI-compatible server VoiceAgent starts itself when llm.base_url is null."""

    # "packaged:smollm2-135m" is SmolLM2-135M-Instruct from PyPI; or a path to a .gguf file.
    model_path: str = "packaged:smollm2-135m"
    context_tokens: int = Field(4096, ge=256)
    # 1 on 2 cores: with Whisper busy on the other core, 2 threads collapsed to seconds per token.
    threads: int = Field(1, ge=1)
    parallel: int = Field(4, ge=1, description="requests decoded at once (llama.cpp slots)")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port on 127.0.0.1")
    start_timeout_s: float = Field(60.0, gt=0)
    # llama.cpp saves the KV state of a conversation that leaves its slot (idle slots too, to
    # free the shared KV pool) so it resumes without a new prefill. The stock cap, 8 GiB, let the
    # child grow ~10 MB a call without levelling off; 128 MiB holds ~5-12 calls' histories and
    # levels at ~+130 MB. Off (0), calls beyond `parallel` re-prefill every turn (p50 first token
    # 4.6 s instead of 1.8-2.0 s with 6 calls on 4 slots, and timeouts).
    prompt_cache_mib: int = Field(128, ge=0, description="RAM for llama.cpp's prompt cache; 0 turns it off")
    # When the oldest exchanges leave the history the prompt's start changes and the cache no longer
    # matches from the top; llama.cpp can shift the still-cached rest into place instead of reading
    # it again (runs of at least this many tokens): first token 0.23 s instead of 1.9 s after
    # dropping 6 of 12 exchanges (256 found no run here). 0 turns it off.
    cache_reuse_tokens: int = Field(32, ge=0, description="llama.cpp --cache-reuse: shortest run reused")
    # SmolLM2-135M copies its own earlier replies word for word ("I'm sorry for any
    # misunderstanding, but as an AI..." on 13 turns of 14). llama.cpp's repeat penalty reaches the
    # prompt's tokens too, so over the whole context it makes the model say something new: copied
    # openings 79 % -> 5 % on a recorded call, 0 % in six live ones; 1.1 was too weak, 1.3 broke
    # answers; DRY or presence/frequency penalties did not stop it (measured, see the README).
    repeat_penalty: float = Field(1.15, ge=1.0, description="llama.cpp repeat penalty over the whole context")


class LLMSettings(_Section):
    # None means the embedded local OpenAI-compatible server; any other URL is external.
    base_url: str | None = None
    api_key: SecretStr = SecretStr("not-needed")
    model: str = "local"
    request_timeout_s: float = Field(30.0, gt=0)
    # Time to the first token; slower endpoints are cut off so the call can say a fallback line.
    first_token_timeout_s: float = Field(10.0, gt=0)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    # Added to every request body: a server's own sampling fields (vLLM's, llama.cpp's). OpenAI
    # itself refuses fields it does not know. The local server gets its repeat penalty this way.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Over extra_body when the model answers from knowledge-base notes in its prompt: sampling
    # that keeps it from repeating the prompt would keep it from the notes' words too.
    grounded_extra_body: dict[str, Any] = Field(default_factory=dict)
    local: LocalLLMSettings = LocalLLMSettings()


class JobSchedule(_Section):
    """When a scheduled job runs: every ``interval_s`` seconds, or on a crontab expression (UTC)."""

    enabled: bool = True
    interval_s: float | None = Field(None, gt=0)
    cron: str | None = Field(None, description="crontab, e.g. '*/5 * * * *' (minute hour day month weekday)")

    @model_validator(mode="after")
    def _one_trigger(self) -> JobSchedule:
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("set exactly one of interval_s or cron")
        return self


class SchedulerSettings(_Section):
    # Run the outreach jobs inside this server node; `voiceagent outreach run` runs them on their own.
    enabled: bool = False
    # A restarted scheduler runs the newest slot it missed once (never every missed slot).
    catch_up: bool = True
    analysis: JobSchedule = JobSchedule(interval_s=300)
    checkin: JobSchedule = JobSchedule(interval_s=10)


class AnalysisSettings(_Section):
    # Each backend reads the same turns; "llm" needs llm.base_url pointing at a capable model.
    backends: list[Literal["embedding", "llm"]] = ["embedding"]
    # A wrong personal greeting is worse than a missed one: on the labelled set (tests/outreach/
    # intent_eval.yaml) 0.7 gives precision 0.98-0.99 / recall 0.75-0.78 against 0.91 / 0.84 at 0.5,
    # and on synthetic traffic it stops fillers ("pardon?", "mm") compounding into false intents.
    min_confidence: float = Field(0.7, ge=0, le=1)
    batch_turns: int = Field(5000, ge=1, description="turns read per database round trip")


class OutreachRules(_Section):
    greet_returning: bool = True  # a user with an open intent is greeted by it (pending till they call)
    greet_expires_s: float = Field(7 * 86400, gt=0)
    checkin_after_silence_s: float = Field(20.0, gt=0)  # a live call this quiet gets one check-in
    checkin_text: str = Field("Are you still there? I'm here if you need anything.", min_length=1)
    checkin_expires_s: float = Field(30.0, gt=0)


class OutreachSettings(_Section):
    enabled: bool = True  # this node speaks outreach events in its calls
    intents_file: str = "configs/intents.yaml"
    heartbeat_s: float = Field(5.0, gt=0)  # a node refreshes its calls in the registry this often
    stale_after_s: float = Field(20.0, gt=0)  # a registry entry not refreshed this long is a dead node's
    claim_s: float = Field(30.0, gt=0)  # a node holds an event this long per claim (renewed while it waits)
    # The broker hides a received event this long, extended while its prompt waits or plays. Long
    # enough to cover most prompts unextended: RocketMQ 5.3 brings an extended message back once
    # per extension, even after its ack (harmless: the ledger says it was spoken; but traffic).
    invisible_s: float = Field(60.0, gt=0)
    concurrency: int = Field(64, ge=1)  # events handled at once per node (most just wait for a safe point)
    max_attempts: int = Field(20, ge=1)  # deliveries before an event is dead-lettered
    scheduler: SchedulerSettings = SchedulerSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    rules: OutreachRules = OutreachRules()


class Settings(_Section):
    node_id: str = Field(default_factory=socket.gethostname, min_length=1)
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    events: EventSettings = EventSettings()
    llm: LLMSettings = LLMSettings()
    engines: EngineSettings = EngineSettings()
    conversation: ConversationSettings = ConversationSettings()
    transport: TransportSettings = TransportSettings()
    outreach: OutreachSettings = OutreachSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    security: SecuritySettings = SecuritySettings()
    admin: AdminSettings = AdminSettings()
    jobs: JobsSettings = JobsSettings()


Layer = tuple[str, Mapping[str, Any]]


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    default_path: Path = DEFAULT_CONFIG_PATH,
) -> Settings:
    """Build the effective settings; raise ConfigError naming the key and where it came from."""
    environ = os.environ if environ is None else environ
    layers: list[Layer] = []
    if default_path.exists():
        layers.append((str(default_path), _read_yaml(default_path)))
    chosen = config_path or environ.get(CONFIG_ENV_VAR)
    if chosen:
        path = Path(chosen)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        layers.append((str(path), _read_yaml(path)))
    env_layer = _env_overrides(environ)
    if env_layer:
        layers.append(("environment", env_layer))
    merged, origins = _merge(layers)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``VOICEAGENT_A__B=v`` into ``{"a": {"b": v}}``; JSON values for lists and maps."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment {name}: empty key segment (use '__' between keys)")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment {name}: not valid JSON: {exc.msg}") from None
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: '{part}' is set both as a value and a section")
            node = child
        node[path[-1]] = value
    return tree


def _merge(layers: list[Layer]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}

    def fold(target: dict[str, Any], source: Mapping[str, Any], prefix: tuple[str, ...], label: str) -> None:
        for key, value in source.items():
            path = (*prefix, str(key))
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                fold(target[key], value, path, label)
            else:
                target[key] = dict(value) if isinstance(value, Mapping) else value
                origins[path] = label
                # A whole section replaced by this layer: its leaves are this layer's too.
                for known in [p for p in origins if p[: len(path)] == path and p != path]:
                    origins[known] = label

    for label, data in layers:
        fold(merged, data, (), label)
    return merged, origins


def _describe(exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        source = next(
            (origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins),
            "defaults",
        )
        key = ".".join(loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{source}: {key}: unknown key")
            continue
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        problems.append(f"{source}: {key}: {error['msg']}{shown}")
    return "invalid configuration: " + "; ".join(problems)


def settings_as_yaml(settings: Settings) -> str:
    """The effective settings with secrets (SecretStr fields, URL passwords) masked."""
    data = settings.model_dump(mode="json")
    data["store"]["url"] = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", data["store"]["url"])
    return yaml.safe_dump(data, sort_keys=False)
