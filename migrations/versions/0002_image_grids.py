"""Per-sample image grids: each image's rows x cols of visual tokens, to draw kept tokens back onto it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Dynamic-resolution models (Qwen2.5-VL, Qwen3-VL) give each image its own grid of merged patches (rows x cols, not
square); LLaVA-NeXT adds an anyres grid whose rows end in newline tokens. Nullable: rows stored before this revision
keep None, and the dashboard falls back to a square grid for them. Written by hand to match pilot.store.models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sample_results") as batch:
        batch.add_column(sa.Column("image_grids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample_results") as batch:
        batch.drop_column("image_grids")
