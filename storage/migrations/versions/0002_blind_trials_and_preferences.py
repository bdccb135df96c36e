"""blind trials and preferences

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blind_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("example_key", sa.String(length=64), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("owner_reply", sa.Text(), nullable=False),
        sa.Column("twin_reply", sa.Text(), nullable=False),
        sa.Column("owner_first", sa.Boolean(), nullable=False),
        sa.Column("picked_owner", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_blind_trials_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blind_trials")),
    )
    with op.batch_alter_table("blind_trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blind_trials_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_blind_trials_user_id_example_key"),
            ["user_id", "example_key"],
            unique=True,
        )

    op.create_table(
        "preferences",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=True),
        sa.Column("rejected", sa.Text(), nullable=True),
        sa.Column("verdict", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_preferences_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
    )
    with op.batch_alter_table("preferences", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_preferences_source_created_at"), ["source", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("preferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_preferences_source_created_at"))

    op.drop_table("preferences")
    with op.batch_alter_table("blind_trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blind_trials_user_id_example_key"))
        batch_op.drop_index(batch_op.f("ix_blind_trials_run_id"))

    op.drop_table("blind_trials")
