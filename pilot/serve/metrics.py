"""Prometheus metrics of one server, in a registry of its own (not the process-wide one), so that a test or a
benchmark can build several apps in one process without their counters colliding."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a demo request on a CPU (tens of ms) to a long JSON answer of a 7B model on a loaded GPU.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Visual tokens one request keeps in the last layer: the demo's 196, LLaVA-1.5's 576, a large Qwen image's 4,096.
TOKEN_BUCKETS = (16, 32, 64, 128, 196, 256, 576, 1024, 2048, 4096, 8192)
# How long shadow work keeps a live request waiting: a layer of the demo on a CPU is well under a millisecond.
YIELD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class ServeMetrics:
    """Everything ``/metrics`` shows: requests, latencies, batches, visual tokens kept and the shadow A/B."""

    def __init__(self, model: str, arm: str, shadow: str | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("pilot_serve_info", "What this server serves (value 1)", ["model", "arm", "shadow"],
              registry=r).labels(model, arm, shadow or "").set(1)
        self.requests = Counter("pilot_serve_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("pilot_serve_request_seconds",
                                         "Time from the request's arrival to its last byte sent, by route",
                                         ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft_seconds = Histogram("pilot_serve_time_to_first_token_seconds",
                                      "Time from the request's arrival in the queue to its first generated token",
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_seconds = Histogram("pilot_serve_queue_wait_seconds",
                                       "Time a request waited in the queue before its batch started",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("pilot_serve_batch_size", "Requests per model.generate call of the served arm",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("pilot_serve_queue_depth", "Requests waiting for a batch", registry=r)
        self.prompt_tokens = Counter("pilot_serve_prompt_tokens", "Prompt tokens of answered requests "
                                     "(visual tokens included)", registry=r)
        self.completion_tokens = Counter("pilot_serve_completion_tokens", "Generated tokens", registry=r)
        self.visual_tokens = Counter("pilot_serve_visual_tokens", "Visual tokens the requests brought", registry=r)
        self.visual_tokens_kept = Counter("pilot_serve_visual_tokens_kept",
                                          "Visual tokens kept in the last layer, summed over requests", registry=r)
        self.visual_tokens_kept_per_request = Histogram(
            "pilot_serve_visual_tokens_kept_per_request", "Visual tokens one request keeps in the last layer",
            buckets=TOKEN_BUCKETS, registry=r)
        self.errors = Counter("pilot_serve_generation_errors", "Batches whose generation failed", registry=r)
        # The shadow A/B: sampled requests re-run through the other arm while the server is idle.
        self.shadow_sampled = Counter("pilot_serve_shadow_sampled", "Requests sampled for the shadow arm", registry=r)
        self.shadow_computed = Counter("pilot_serve_shadow_computed", "Shadow answers computed", registry=r)
        self.shadow_stored = Counter("pilot_serve_shadow_stored", "Answer pairs stored in the pilot store",
                                     registry=r)
        self.shadow_dropped = Counter("pilot_serve_shadow_dropped", "Sampled requests not run through the shadow "
                                      "arm, by reason", ["reason"], registry=r)
        self.shadow_preempted = Counter("pilot_serve_shadow_preempted",
                                        "Shadow batches stopped because a live request arrived", registry=r)
        self.shadow_yield_seconds = Histogram(
            "pilot_serve_shadow_yield_seconds", "From a live request's arrival to the shadow batch it interrupted "
            "giving way: the delay shadow work adds to a live answer", buckets=YIELD_BUCKETS_S, registry=r)
        self.shadow_pending = Gauge("pilot_serve_shadow_pending", "Sampled requests waiting for an idle moment",
                                    registry=r)
        self.shadow_agreement = Counter("pilot_serve_shadow_answers",
                                        "Shadow answers by agreement with the served answer (normalised text)",
                                        ["agree"], registry=r)
        self.shadow_agreement_share = Gauge("pilot_serve_shadow_agreement",
                                            "Share of shadow answers equal to the served answer so far", registry=r)
        self._agree = self._total = 0

    def record_shadow_answer(self, agree: bool) -> None:
        self.shadow_agreement.labels("true" if agree else "false").inc()
        self._agree += int(agree)
        self._total += 1
        self.shadow_agreement_share.set(self._agree / self._total)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
