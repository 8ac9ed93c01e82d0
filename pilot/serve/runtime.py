"""``Runtime``: one served model put together (the batcher that owns it, the optional shadow A/B, and the metrics
of both). The HTTP app reads it from ``app.state``; ``pilot.serve.server`` builds it and runs uvicorn around it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
from PIL import Image

from pilot.models import LoadedModel
from pilot.pruning import parse
from pilot.serve import logs
from pilot.serve.batcher import Batcher, model_lock
from pilot.serve.chat import Limits
from pilot.serve.metrics import ServeMetrics
from pilot.serve.settings import ServeSettings, check_arms
from pilot.serve.shadow import LiveRun, ShadowRunner, StoreWriter, live_run_settings

MIB = 2**20


def model_label(loaded: LoadedModel) -> str:
    """The model's name for clients and the store: "demo", or the checkpoint folder's name."""
    return "demo" if loaded.name == "demo" else Path(loaded.path).name


class Runtime:
    """One served model: the batcher that owns it, the optional shadow A/B, and the metrics of both."""

    def __init__(self, settings: ServeSettings, loaded: LoadedModel, arm: str, *, source: str | None = None) -> None:
        self.settings = settings
        self.loaded = loaded
        self.arm = arm
        self.source = source  # where the arm came from: "--arm" or "study NAME"
        self.model_name = settings.served_model_name or model_label(loaded)
        self.device = torch.device(settings.device)
        self.dtype = getattr(torch, settings.dtype)
        self.created = int(time.time())
        self.port: int | None = None
        parse(arm).resolve(loaded.depth)  # a schedule deeper than the model fails here, not on the first request
        max_images = settings.max_images
        if max_images is None:  # the family's: 1 for those trained on one image per conversation
            max_images = loaded.adapter.max_images
        self.limits = Limits(
            max_new_tokens=settings.max_new_tokens, max_images=max_images,
            max_image_bytes=int(settings.max_image_mb * MIB),
            max_image_pixels=int(settings.max_image_megapixels * 1e6),
            allow_dirs=tuple(Path(folder).resolve() for folder in settings.allow_dirs))
        self.max_body_bytes = int(settings.max_body_mb * MIB)
        self.context_tokens = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
        self.metrics = ServeMetrics(self.model_name, arm, settings.shadow)
        self.shadow: ShadowRunner | None = None
        self.live_run: LiveRun | None = None
        if settings.shadow is not None:
            check_arms(arm, settings.shadow)
            parse(settings.shadow).resolve(loaded.depth)
            from pilot.store import open_store

            self._sessions = open_store(settings.db)  # an unreachable store fails here, before the model serves
            LiveRun.check(self._sessions, settings.run_name, loaded, arm, settings.shadow)
            self.shadow = ShadowRunner(loaded, settings.shadow, rate=settings.shadow_rate, seed=settings.shadow_seed,
                                       batch_size=settings.shadow_batch_size, queue_max=settings.shadow_queue_max,
                                       device=self.device, metrics=self.metrics, writer=None)
        self.batcher = Batcher(loaded, arm, device=self.device, dtype=self.dtype,
                               max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, metrics=self.metrics,
                               context_tokens=self.context_tokens, threads=settings.threads, shadow=self.shadow)
        self._lock = threading.Lock()
        self._started = self._closed = False

    def warm_up(self) -> None:
        """One small generation per arm before the first client: kernels and allocators settle."""
        from pilot.generation import generate_batch

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        inputs = self.batcher.prepare([_Warm(self.loaded.prompt("warm up"), [image])])
        for arm in [self.arm] + ([self.settings.shadow] if self.settings.shadow else []):
            with model_lock(self.loaded.model):
                generate_batch(self.loaded, arm, inputs, [2], self.device)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.shadow is not None:  # the live run is opened once the server really starts
            settings = self.settings
            serve_info = {"served_arm": self.arm, "shadow_arm": settings.shadow, "shadow_rate": settings.shadow_rate,
                          "arm_source": self.source, "max_batch_size": settings.max_batch_size,
                          "max_wait_ms": settings.max_wait_ms}
            self.live_run = LiveRun.open(
                self._sessions, name=settings.run_name, loaded=self.loaded, model_label=self.model_name,
                served_arm=self.arm, shadow_arm=settings.shadow, device=self.device,
                settings=live_run_settings(self.model_name, self.arm, settings.shadow,
                                           batch_size=settings.max_batch_size, device=settings.device,
                                           dtype=settings.dtype, max_new_tokens=settings.max_new_tokens,
                                           serve=serve_info))
            self.shadow.writer = StoreWriter(self.live_run, self.metrics, flush_s=settings.shadow_flush_s,
                                             summary_every=settings.shadow_summary_every,
                                             live_idle=self.batcher.live_idle)
            self.shadow.writer.start()
        self.batcher.start()

    def close(self) -> None:
        """Finish queued work, drain shadow work (bounded), store every computed pair. Idempotent."""
        with self._lock:
            if self._closed or not self._started:
                return
            self._closed = True
        logs.event("draining", queued=self.batcher.queued,
                   shadow_pending=self.shadow.pending if self.shadow else 0)
        self.batcher.stop(shadow_drain_s=self.settings.shadow_drain_s if self.shadow else 0.0)
        if self.shadow is not None:
            self.shadow.close()
            logs.event("shadow_closed", run_id=self.live_run.run_id, run=self.live_run.name,
                       stored=self.shadow.writer.stored, lost=self.shadow.writer.lost)
        logs.event("stopped")


class _Warm:
    def __init__(self, prompt: str, images: list[Image.Image]) -> None:
        self.prompt = prompt
        self.images = images
