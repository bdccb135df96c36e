"""what a person saw: media text, durations, names, links, reactions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("media_text", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("duration", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sender_name", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("forwarded_from", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("via_bot", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "links",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "reactions",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("reactions")
        batch_op.drop_column("links")
        batch_op.drop_column("via_bot")
        batch_op.drop_column("forwarded_from")
        batch_op.drop_column("sender_name")
        batch_op.drop_column("duration")
        batch_op.drop_column("media_text")
