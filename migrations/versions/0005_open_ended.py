"""Open-ended answers: each result's task, its scores and how its answer was generated.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

``sample_results``: ``task`` (label, text or json; NULL for results stored before: label), ``references`` (the
row's reference answers), ``scores`` (the per-sample metrics of its task: exact match, ANLS, token F1, relaxed
accuracy; JSON field counts and validity), ``output_tokens``, ``ttft_ms`` (time to first token),
``tpot_ms`` (time per output token after the first), ``kv_cache_bytes`` (the KV cache the sample held at its
last token), ``finish_reason`` ("stop": end of sequence, "length": cut at the token limit) and ``utf8_valid``
(False when the answer's bytes are not valid UTF-8). Written by hand to match pilot.store.models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("task", sa.String(length=16)),
    ("references", sa.JSON()),
    ("scores", sa.JSON()),
    ("output_tokens", sa.Integer()),
    ("ttft_ms", sa.Float()),
    ("tpot_ms", sa.Float()),
    ("kv_cache_bytes", sa.BigInteger()),
    ("finish_reason", sa.String(length=16)),
    ("utf8_valid", sa.Boolean()),
)


def upgrade() -> None:
    with op.batch_alter_table("sample_results") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample_results") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
