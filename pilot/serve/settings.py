"""What ``pilot serve`` does: its settings, checked before anything loads, and the arm a finished study verified."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pilot.pruning import parse

API_KEY_ENV = "PILOT_API_KEY"
BASELINE = "baseline"  # pilot.summaries.BASELINE (no store import here)


@dataclass
class ServeSettings:
    """``pilot serve``'s flags (defaults as the CLI's)."""

    model: str | None = None  # a checkpoint folder or "demo"; None: the study's model, else demo
    arm: str | None = None  # the served strategy; or from_study
    from_study: str | None = None  # serve this tuning study's verified recommendation
    shadow: str | None = None  # the other arm of the shadow A/B (e.g. baseline)
    shadow_rate: float = 0.1  # share of requests also run through the shadow arm
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (logged as "listening")
    api_key: str | None = None  # else $PILOT_API_KEY; required
    allow_dirs: list[str] = field(default_factory=list)  # local image paths allowed under these
    max_batch_size: int = 8
    max_wait_ms: float = 50.0  # how long a batch waits for requests still arriving (none arriving: no wait)
    max_queue: int = 256  # requests waiting beyond this get a 503
    max_new_tokens: int = 256  # a request's max_tokens: default and upper limit
    max_images: int | None = None  # per request; None: the family's (1 for LLaVA-1.5/NeXT, else 8)
    max_body_mb: float = 20.0
    max_image_mb: float = 10.0  # one image, encoded
    max_image_megapixels: float = 40.0  # one image, decoded
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # torch threads of the model's worker; None: torch's default (the cores)
    served_model_name: str | None = None  # the name clients give as "model"; None: demo or the folder's name
    db: str | None = None  # the store of the shadow run and of --from-study (default ./pilot.db)
    run_name: str | None = None  # the shadow run's name (an existing one with the same arms is continued)
    shadow_batch_size: int = 4
    shadow_queue_max: int = 1000  # sampled requests waiting for an idle moment; more are dropped (counted)
    shadow_flush_s: float = 1.0  # computed pairs wait at most this long before they are stored
    shadow_summary_every: int = 100  # pairs between summary writes
    shadow_drain_s: float = 5.0  # at shutdown, pending shadow work for up to this long
    shadow_seed: int = 0
    shutdown_timeout_s: float = 30.0  # in-flight requests get this long to finish after SIGTERM
    log_level: str = "info"

    def validate(self) -> None:
        if (self.arm is None) == (self.from_study is None):
            raise ValueError("give the arm to serve: --arm SPEC (e.g. --arm baseline) or --from-study NAME")
        if self.arm is not None:
            self.arm = str(parse(self.arm))  # raises ValueError naming a bad strategy
        if self.shadow is not None:
            self.shadow = str(parse(self.shadow))
            if self.arm is not None:
                check_arms(self.arm, self.shadow)
            if not 0 < self.shadow_rate <= 1:
                raise ValueError(f"--shadow-rate {self.shadow_rate}: give a share in (0, 1], e.g. 0.1")
        for name in ("max_batch_size", "max_queue", "max_new_tokens", "shadow_batch_size", "shadow_queue_max",
                     "shadow_summary_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a number >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: give a number >= 1")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError(f"--max-images {self.max_images}: give a number >= 0")
        for name in ("max_wait_ms", "shadow_flush_s", "shadow_drain_s", "shutdown_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a number >= 0")
        for name in ("max_body_mb", "max_image_mb", "max_image_megapixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a number > 0")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype {self.dtype!r}: use float32, bfloat16 or float16")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port {self.port}: give 0 (any free port) to 65535")
        for folder in self.allow_dirs:
            if not Path(folder).is_dir():
                raise ValueError(f"--allow-dir {folder}: no such directory")

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ValueError(f"an API key is required on every route but /health: give --api-key KEY or set "
                             f"{API_KEY_ENV} (a gateway in front sends it as 'Authorization: Bearer KEY')")
        return key


def check_arms(served: str, shadow: str) -> None:
    """The shadow arm differs from the served one, and one of them is the baseline the run compares with."""
    if served == shadow:
        raise ValueError(f"--shadow {shadow}: the same as the served arm; shadow the other arm of the A/B")
    if BASELINE not in (served, shadow):
        raise ValueError(f"--arm {served} --shadow {shadow}: one of them must be baseline (the run compares the "
                         "pruned arm's answers with the baseline's)")


@dataclass(frozen=True)
class StudyArm:
    """A finished study's verified recommendation, and the model it was verified on."""

    study: str
    strategy: str
    model: str  # as the study was given it: "demo" or a folder
    config_sha256: str  # the verification run's model
    verification_run_id: int


def study_recommendation(db_url: str | None, name: str) -> StudyArm:
    """The arm a finished ``pilot tune --study NAME`` verified on held-out data, or ValueError saying why not."""
    from pilot.store import models as db
    from pilot.store import open_store

    sessions = open_store(db_url)
    with sessions() as session:
        study = session.scalar(select(db.TuningStudy).where(db.TuningStudy.name == name))
        if study is None:
            names = list(session.scalars(select(db.TuningStudy.name).order_by(db.TuningStudy.id)))
            raise ValueError(f"--from-study {name}: no such study in this store"
                             + (f"; studies: {', '.join(names)}" if names else " (it has none; run `pilot tune`)"))
        if not study.recommended_strategy or study.verification_run_id is None:
            raise ValueError(f"--from-study {name}: the study has no verified recommendation (no schedule held its "
                             "budget on the held-out data, or the study has not finished); `pilot tune --study "
                             f"{name}` resumes it, or serve an arm with --arm")
        run = session.get(db.Run, study.verification_run_id)
        return StudyArm(study=name, strategy=str(parse(study.recommended_strategy)),
                        model=(study.settings or {}).get("model") or "demo",
                        config_sha256=run.model.config_sha256, verification_run_id=run.id)
