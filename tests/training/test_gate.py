"""The quality gate: a continued run that is worse than the serving one does not serve."""

from __future__ import annotations

from typing import Any

import pytest

from tests.training.test_trainer import (
    TinySetup,
    add_new_sessions,
    tiny_options,
    tiny_setup,
)
from training.gate import GateDecision, judge_retrain
from training.trainer import train


@pytest.fixture(autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def retrained(tmp_path: Any) -> TinySetup:
    return tiny_setup(tmp_path)


def active_id(database: Any) -> int | None:
    from storage.runs import active_run

    with database.session() as session:
        run = active_run(session)
        return run.id if run else None


def test_a_retrain_that_got_worse_keeps_the_serving_run_and_says_why(
    retrained: TinySetup, sqlite_database: Any
) -> None:
    parent = train(sqlite_database, tiny_options(), retrained.data_dir)
    add_new_sessions(retrained, 8)
    # A huge learning rate wrecks the adapter: the held-out loss rises.
    worse = tiny_options(continue_training=True, learning_rate=5.0, epochs=3, warmup_ratio=0.0)

    child = train(sqlite_database, worse, retrained.data_dir)

    assert child.status == "succeeded" and not child.activated
    assert child.gate is not None and not child.gate.passed
    assert child.gate.new_loss > child.gate.serving_loss
    assert f"run {parent.run_id} keeps serving" in child.gate.reason
    assert active_id(sqlite_database) == parent.run_id
    with sqlite_database.session() as session:
        from storage.runs import get_run

        recorded = GateDecision.from_metrics(get_run(session, child.run_id).metrics)
    assert recorded == child.gate


def test_force_serves_a_worse_retrain_and_a_better_one_serves_by_itself(
    retrained: TinySetup, sqlite_database: Any
) -> None:
    train(sqlite_database, tiny_options(), retrained.data_dir)
    add_new_sessions(retrained, 8)
    forced = train(
        sqlite_database,
        tiny_options(
            continue_training=True, learning_rate=5.0, epochs=3, warmup_ratio=0.0, force=True
        ),
        retrained.data_dir,
    )
    assert forced.activated and forced.gate.passed and forced.gate.forced
    add_new_sessions(retrained, 16, before=56, fingerprint="fp-third")

    better = train(sqlite_database, tiny_options(continue_training=True), retrained.data_dir)

    assert better.activated and better.gate.passed
    assert active_id(sqlite_database) == better.run_id


def test_the_margin_lets_a_run_within_it_serve() -> None:
    metrics = {"val_loss_start": 1.0, "val_loss": 1.04}

    assert not judge_retrain(metrics, 1, margin=0.0, force=False).passed
    assert judge_retrain(metrics, 1, margin=0.05, force=False).passed
    assert judge_retrain({"val_loss": None}, 1, margin=0.0, force=False).passed
