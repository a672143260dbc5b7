"""The first schema: study, readers, presentations.

Revision ID: v0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "v0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables (see :mod:`rankiq.service.readers.db`)."""
    op.create_table(
        "study",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("pairs_fingerprint", sa.String(64), nullable=True),
        sa.Column("n_pairs", sa.Integer, nullable=True),
        sa.Column("settings_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("task", sa.String(8), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("name", "task", name="uq_readers_name_task"),
    )
    op.create_table(
        "presentations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("pair_id", sa.Integer, nullable=False),
        sa.Column("image", sa.Integer, nullable=False),
        sa.Column("is_repeat", sa.Boolean, nullable=False),
        sa.Column("flipped", sa.Boolean, nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("answered_at", sa.Float, nullable=True),
        sa.Column("outcome", sa.String(8), nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.UniqueConstraint("reader_id", "seq", name="uq_presentations_reader_seq"),
    )
    op.create_index("ix_presentations_pair", "presentations", ["pair_id"])


def downgrade() -> None:
    """Drop the tables."""
    op.drop_index("ix_presentations_pair", "presentations")
    op.drop_table("presentations")
    op.drop_table("readers")
    op.drop_table("study")
