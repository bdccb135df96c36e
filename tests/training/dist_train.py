"""Run by `torchrun --nproc_per_node 2` in the tests: one training run over two CPU processes.

Usage: torchrun --nproc_per_node 2 tests/training/dist_train.py DATABASE_URL DATA_DIR [dpo|kto]

With `dpo` or `kto` the run is a preference round (`--dpo`) on the active run instead.
"""

from __future__ import annotations

import sys

import torch

from storage import open_database
from training.trainer import TrainOptions, train


def main(database_url: str, data_dir: str, preference: str | None = None) -> None:
    torch.set_num_threads(1)
    values = {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.0,
        "epochs": 2,
        "learning_rate": 1e-2,
        "batch_tokens": 256,
        "eval_every": 0,
        "checkpoint_every": 4,
    }
    if preference:
        values.update(
            dpo=True, self_play=16, max_steps=6, learning_rate=1e-4, preference_loss=preference
        )
    options = TrainOptions(**values)
    database = open_database(database_url)
    try:
        train(database, options, data_dir)
    finally:
        database.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
