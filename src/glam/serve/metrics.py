"""``GET /metrics``: the server's state in Prometheus' text format (the ``prometheus-client`` library).

Each app has its own ``CollectorRegistry`` (several apps in one process, as in tests, never collide).
Names follow vLLM's where one exists, with the ``glam_`` prefix:

- ``glam_requests_total{route, status}``: HTTP exchanges answered, by route (``other`` for unknown
  paths) and status code (499: the client left first);
- gauges read from ``engine.stats()`` when scraped: ``glam_queue_depth`` (rows waiting for a slot),
  ``glam_running_rows``, ``glam_slots``, ``glam_requests_in_flight``;
- ``glam_batch_occupancy``: live rows ÷ slots after each decode step (``engine.on_step``);
- ``glam_prompt_tokens_total`` (bos included, as ``usage.prompt_tokens``) and
  ``glam_generation_tokens_total`` (``usage.completion_tokens``), counted when a request ends;
- histograms of ``glam_time_to_first_token_seconds`` (admission → the first generated token's event,
  requests without ``echo``), ``glam_time_per_output_token_seconds`` ((end − first token) ÷ (tokens − 1),
  requests with at least 2 tokens) and ``glam_e2e_request_latency_seconds`` (admission → last event).
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OCCUPANCY_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no `_created` series beside every counter and histogram (vLLM does the same)


class Metrics:
    """The app's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self, engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "glam_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        for name, key, doc in (
            ("glam_queue_depth", "waiting_rows", "rows waiting for a slot"),
            ("glam_running_rows", "running_rows", "rows holding a slot"),
            ("glam_slots", "slots", "slots (rows decoded together, --max-batch)"),
        ):
            Gauge(name, doc, registry=r).set_function(lambda key=key: engine.stats()[key])
        Gauge("glam_requests_in_flight", "requests admitted and not yet answered", registry=r).set_function(
            lambda: engine.in_flight
        )
        self.occupancy = Histogram(
            "glam_batch_occupancy", "live rows / slots after each decode step", buckets=OCCUPANCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("glam_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("glam_generation_tokens", "tokens generated for finished requests", registry=r)
        self.ttft = Histogram(
            "glam_time_to_first_token_seconds",
            "admission to the first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "glam_time_per_output_token_seconds", "mean time between generated tokens", buckets=TPOT_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "glam_e2e_request_latency_seconds", "admission to the last token", buckets=E2E_BUCKETS, registry=r
        )
        engine.on_step = self.on_step  # the engine calls it after every decode step (its own thread)

    def on_step(self, live_rows: int, slots: int) -> None:
        self.occupancy.observe(live_rows / max(slots, 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self, echo: bool) -> RequestTimer:
        return RequestTimer(self, echo)


class RequestTimer:
    """One request's timestamps: admission, first generated token, last event."""

    def __init__(self, metrics: Metrics, echo: bool):
        self.metrics, self.echo = metrics, echo
        self.start, self.first = time.perf_counter(), None

    def event(self) -> None:
        if self.first is None and not self.echo:
            self.first = time.perf_counter()
            self.metrics.ttft.observe(self.first - self.start)

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        end = time.perf_counter()
        m = self.metrics
        m.prompt_tokens.inc(prompt_tokens)
        m.generation_tokens.inc(completion_tokens)
        m.e2e.observe(end - self.start)
        if self.first is not None and completion_tokens > 1:
            m.tpot.observe((end - self.first) / (completion_tokens - 1))


class RequestCounter:
    """ASGI middleware: counts every answered exchange by route and status (a client gone first: 499)."""

    def __init__(self, app, metrics: Metrics, routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 499

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            status = 500
            raise
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.labels(route, str(status)).inc()
