"""Prometheus metrics, one registry per runtime so tests and several apps never collide."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from voiceagent import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.build_info = Gauge(
            "voiceagent_build_info",
            "Version and node of this server",
            ["version", "node_id"],
            registry=self.registry,
        )
        self.build_info.labels(version=__version__, node_id=node_id).set(1)
        self.http_requests = Counter(
            "voiceagent_http_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "voiceagent_http_request_duration_seconds",
            "HTTP request handling time",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "voiceagent_dependency_up",
            "1 when the last readiness probe of a dependency passed",
            ["dependency"],
            registry=self.registry,
        )

        self.engine_queue_depth = Gauge(
            "voiceagent_engine_queue_depth",
            "Requests waiting for a model worker",
            ["engine"],
            registry=self.registry,
        )
        self.engine_rejected = Counter(
            "voiceagent_engine_rejected_total",
            "Requests refused because the engine queue was full",
            ["engine"],
            registry=self.registry,
        )
        self.engine_seconds = Histogram(
            "voiceagent_engine_seconds",
            "Time a model worker spent on one request",
            ["engine"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
            registry=self.registry,
        )

        self.calls_active = Gauge(
            "voiceagent_calls_active", "Live calls on this node", registry=self.registry
        )
        self.turn_seconds = Histogram(
            "voiceagent_turn_seconds",
            "Per-turn latency by stage (voice_to_voice is end to end)",
            ["stage"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5),
            registry=self.registry,
        )
        self.barge_ins = Counter(
            "voiceagent_barge_ins_total", "Agent replies interrupted by the caller", registry=self.registry
        )
        self.barge_ins_rejected = Counter(
            "voiceagent_barge_ins_rejected_total",
            "Voice over the agent that held its audio but was not an interruption, by why",
            ["reason"],
            registry=self.registry,
        )
        self.replies_discarded = Counter(
            "voiceagent_replies_discarded_total",
            "Replies prepared during a pause and thrown away unheard because the caller went on",
            registry=self.registry,
        )
        self.replies_discarded_seconds = Counter(
            "voiceagent_replies_discarded_seconds_total",
            "Time discarded replies kept LLM and TTS busy (the compute preemption wastes)",
            registry=self.registry,
        )
        self.calls_failed = Counter(
            "voiceagent_calls_failed_total",
            "Calls ended by a bug that escaped the conversation",
            registry=self.registry,
        )
        self.call_faults = Counter(
            "voiceagent_call_faults_total",
            "Failures a conversation contained (each cost at most one reply), by stage",
            ["stage"],
            registry=self.registry,
        )
        self.call_recoveries = Counter(
            "voiceagent_call_recoveries_total",
            "Conversations the watchdog found stuck (a bug) and reset to listening",
            ["reason"],
            registry=self.registry,
        )
        self.gc_seconds = Histogram(
            "voiceagent_gc_seconds",
            "Time the node spent collecting ended calls' garbage (the event loop waits meanwhile)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=self.registry,
        )
        self.turns_not_stored = Counter(
            "voiceagent_turns_not_stored_total",
            "Turns dropped after the store refused them on every attempt",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def http_middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        route = _route_template(request)
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            self.http_requests.labels(request.method, route, str(status)).inc()
            self.http_latency.labels(request.method, route).observe(time.perf_counter() - started)


def _route_template(request: Request) -> str:
    # Label by route template, not raw path, so ids in URLs cannot blow up the series count.
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"
