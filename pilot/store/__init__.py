"""The result store: SQLAlchemy models of datasets, runs, arms and per-sample results, with Alembic migrations.

SQLite (default ``pilot.db``) or PostgreSQL. Imports no torch.
"""

from pilot.store.models import (
    INVALID_PREDICTION,
    RUN_STATUSES,
    Arm,
    ArmSummary,
    Base,
    Dataset,
    ModelRecord,
    Run,
    SampleResult,
    TuningStudy,
    utcnow,
)
from pilot.store.session import (
    DEFAULT_URL,
    VERSION_TABLE,
    alembic_config,
    current_revision,
    get_or_create,
    head_revision,
    is_transient,
    make_engine,
    normalise_url,
    open_store,
    schema_lock,
    upgrade,
    with_retries,
)

__all__ = [
    "DEFAULT_URL",
    "INVALID_PREDICTION",
    "RUN_STATUSES",
    "VERSION_TABLE",
    "Arm",
    "ArmSummary",
    "Base",
    "Dataset",
    "ModelRecord",
    "Run",
    "SampleResult",
    "TuningStudy",
    "alembic_config",
    "current_revision",
    "get_or_create",
    "head_revision",
    "is_transient",
    "make_engine",
    "normalise_url",
    "open_store",
    "schema_lock",
    "upgrade",
    "with_retries",
    "utcnow",
]
