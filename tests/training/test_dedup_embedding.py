"""`--dedup embedding` through the real sentence-transformers model loading and faiss search.

The model is a tiny BERT with random weights and a word-level tokenizer built on the spot.
Without position embeddings its vector of a text is close to the mean of its words', so texts
sharing most words are close and texts sharing few are far; every test checks the
similarities it relies on first. Words outside the vocabulary all become [UNK]: texts that
differ only in such words (names, here) get identical vectors, while their normalized texts
differ, so exact dedup does not catch them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.chat_data import START, message, save_tokenizer, store
from training.dataset import DatasetOptions, build_dataset, load_dataset_dir
from training.dedup import EMBEDDING_NEIGHBOURS, embedding_duplicates
from training.errors import TrainingError
from training.prompt import IGNORE_INDEX

VOCABULARY = (
    "meet at the station seven and then walk to old bookshop by river say hi coffee "
    "tomorrow after work movie on weekend call me later thanks sorry maybe dinner green "
    "door last train home when do we what about you"
)
HIDDEN_SIZE = 64

MEET = "meet at the station at seven and then walk to the old bookshop by the river"
MEET_ANNA = f"{MEET}, say hi to anna"
MEET_OLGA = f"{MEET}, say hi to olga"  # same tokens as MEET_ANNA: names are [UNK]
MEET_SHORT = MEET.replace("the old bookshop", "the bookshop")  # one token less
COFFEE = "coffee tomorrow after work and then a movie on the weekend"
CALL = "call me later, sorry, maybe dinner at the green door"
TRAIN = "what about the last train home when you walk by"


def save_embedding_model(root: Path) -> Path:
    """A sentence-transformers model folder (BERT + mean pooling), saved like a hub one.

    Position and segment embeddings are zeroed so that a text's vector depends on its words
    only: with random weights they would make every text of the same length look alike.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator([VOCABULARY], trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN_SIZE,
        max_position_embeddings=256,
    )
    bert = BertModel(config)
    with torch.no_grad():
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    transformer = Transformer(str(root / "bert"), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_embedding_model(tmp_path_factory.mktemp("embedding-model"))


@pytest.fixture
def faiss_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(vector size, neighbours asked) of every faiss search the dedup makes."""
    import faiss

    calls: list[tuple[int, int]] = []
    real_index = faiss.IndexFlatIP

    class RecordingIndex(real_index):  # type: ignore[misc, valid-type]
        def search(self, vectors: Any, neighbours: int, *args: Any, **kwargs: Any) -> Any:
            calls.append((vectors.shape[1], neighbours))
            return super().search(vectors, neighbours, *args, **kwargs)

    monkeypatch.setattr(faiss, "IndexFlatIP", RecordingIndex)
    return calls


def cosines(model_path: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(model_path)).encode(texts, normalize_embeddings=True)
    return vectors @ vectors.T


def test_the_real_model_and_faiss_drop_later_texts_the_model_cannot_tell_apart(
    model_path: Path, faiss_calls: list[tuple[int, int]]
) -> None:
    texts = [MEET_ANNA, COFFEE, MEET, CALL, MEET_OLGA, TRAIN, MEET_SHORT]
    similarity = cosines(model_path, texts)
    # What the texts were built to be: OLGA is ANNA to the model, SHORT one word from MEET,
    # MEET a little further from ANNA, and the rest far from everything.
    assert similarity[0, 4] > 0.9999
    assert 0.96 < similarity[2, 6] < 0.995
    assert 0.87 < similarity[0, 2] < 0.93
    assert similarity[0, 6] < 0.93
    others = ~np.eye(len(texts), dtype=bool)
    assert similarity[[1, 3, 5]][others[[1, 3, 5]]].max() < 0.75

    def dropped(threshold: float) -> list[int]:
        duplicate = embedding_duplicates(texts, threshold, str(model_path))
        return np.flatnonzero(duplicate).tolist()

    assert dropped(1.0) == [4]
    assert dropped(0.999) == [4]
    assert dropped(0.95) == [4, 6]
    assert dropped(0.85) == [2, 4, 6]
    assert faiss_calls == [(HIDDEN_SIZE, len(texts))] * 4


def test_a_close_earlier_text_counts_however_many_later_copies_follow(
    model_path: Path, faiss_calls: list[tuple[int, int]]
) -> None:
    copies = [f"{MEET_SHORT} name{number}" for number in range(EMBEDDING_NEIGHBOURS + 3)]
    texts = [f"{MEET} anna", COFFEE, *copies]
    similarity = cosines(model_path, texts)
    assert 0.96 < similarity[0, 2] < 0.995  # each copy is close to the first text
    assert similarity[2:, 2:].min() > 0.9999  # and closer still to the other copies
    assert similarity[1, [0, 2]].max() < 0.75

    duplicate = embedding_duplicates(texts, 0.95, str(model_path))

    # The first copy's neighbour list is full of its later copies, all closer than the first
    # text; it is still a near-duplicate of the first text.
    assert duplicate.tolist() == [False, False] + [True] * len(copies)
    assert faiss_calls == [(HIDDEN_SIZE, EMBEDDING_NEIGHBOURS + 1)]


def test_threshold_one_drops_every_copy_of_a_vector_despite_rounding(
    faiss_calls: list[tuple[int, int]],
) -> None:
    vectors = np.random.default_rng(0).normal(size=(20, HIDDEN_SIZE)).astype(np.float32)
    twice = np.concatenate([vectors, vectors])

    duplicate = embedding_duplicates([str(row) for row in range(40)], 1.0, encode=lambda _: twice)

    # faiss scores most, not all, copies of a unit vector 0.99999994 rather than 1.
    assert duplicate.tolist() == [False] * 20 + [True] * 20
    assert faiss_calls == [(HIDDEN_SIZE, EMBEDDING_NEIGHBOURS + 1)]


def test_a_missing_embedding_model_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"

    with pytest.raises(TrainingError, match=r"cannot load the embedding model .*no-model-here"):
        embedding_duplicates([MEET, COFFEE], 0.95, str(missing))


PAIRS = [
    ("when do we meet?", MEET_ANNA),
    ("what about coffee?", COFFEE),
    ("and later?", CALL),
    ("when do we meet?", MEET_OLGA),
    ("how do you get home?", TRAIN),
]


def store_pairs(database: Any) -> None:
    rows = []
    for number, (theirs, reply) in enumerate(PAIRS):
        date = START + timedelta(days=2 * number)
        rows.append(message(1, 10 * number + 1, date, False, theirs))
        rows.append(message(1, 10 * number + 2, date + timedelta(minutes=1), True, reply))
    store(database, [{"id": 1, "kind": "personal_chat", "title": "Chat 1"}], rows)


def test_twin_dataset_build_takes_the_embedding_model_from_its_flag(
    model_path: Path, faiss_calls: list[tuple[int, int]], tmp_path: Path
) -> None:
    from storage import open_database
    from twin.cli import main

    data = tmp_path / "data"
    data.mkdir()
    database = open_database(f"sqlite:///{data / 'twin.db'}")
    store_pairs(database)
    database.close()
    tokenizer = save_tokenizer(tmp_path / "tokenizer")

    code = main(
        [
            *("--data-dir", str(data), "dataset", "build", "--base-model", str(tokenizer)),
            *("--dedup", "embedding", "--embedding-model", str(model_path), "--validation", "0"),
        ]
    )

    assert code == 0
    assert faiss_calls == [(HIDDEN_SIZE, len(PAIRS))]
    stats = json.loads(next((data / "datasets").glob("*/stats.json")).read_text())
    dedup = next(item for item in stats["steps"] if item["step"] == "dedup")
    assert dedup["dropped"] == {"exact": 0, "near": 1, "short_capped": 0}
    assert dedup["notes"]["method"] == "embedding"


def test_build_dataset_with_embedding_dedup_drops_the_later_near_duplicate_reply(
    sqlite_database: Any,
    model_path: Path,
    faiss_calls: list[tuple[int, int]],
    tmp_path: Path,
) -> None:
    store_pairs(sqlite_database)
    options = DatasetOptions(
        base_model=str(save_tokenizer(tmp_path / "tokenizer")),
        dedup="embedding",
        embedding_model=str(model_path),
        validation_fraction=0.0,
    )

    result = build_dataset(sqlite_database, options, tmp_path / "data")

    dedup = next(item for item in result.stats["steps"] if item["step"] == "dedup")
    assert dedup["dropped"] == {"exact": 0, "near": 1, "short_capped": 0}
    assert faiss_calls == [(HIDDEN_SIZE, len(PAIRS))]
    built, _ = load_dataset_dir(tmp_path / "data")
    learned = [
        turn["content"]
        for row in built["train"]
        if any(label != IGNORE_INDEX for label in row["labels"])
        for turn in json.loads(row["messages"])
        if turn["role"] == "assistant"
    ]
    assert sorted(learned) == sorted([MEET_ANNA, COFFEE, CALL, TRAIN])
