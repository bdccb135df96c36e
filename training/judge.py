"""The authorship judge: did the owner write this message? A classifier of the owner's style.

Trained on the training split only (the owner's replies against the contacts' messages), it
scores held-out text: the owner's real replies give the ceiling, the contacts' messages the
floor, and the base model's and the tuned twin's replies fall somewhere between. Character
n-grams (TF-IDF) with a logistic regression, from scikit-learn: it reads spelling, emoji,
punctuation and favourite words, in any script, and trains in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from training.errors import TrainingError

#: At least this many texts of each side to train on.
MIN_TEXTS = 10


@dataclass(frozen=True)
class Judge:
    """A fitted scikit-learn pipeline; `owner_probability` is its "written by the owner" score."""

    pipeline: Any
    trained_on: tuple[int, int]  # (owner texts, contact texts)

    def owner_probability(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros(0)
        return self.pipeline.predict_proba(list(texts))[:, 1]

    def judged_owner(self, texts: Sequence[str]) -> Any:
        """1.0 for each text the judge takes for the owner's, else 0.0."""
        return (self.owner_probability(texts) >= 0.5).astype(float)


def train_judge(owner_texts: Iterable[str], contact_texts: Iterable[str], seed: int = 0) -> Judge:
    """Fit the judge on the owner's texts (label 1) against the contacts' (label 0)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    owner = _distinct(owner_texts)
    contacts = _distinct(contact_texts)
    if min(len(owner), len(contacts)) < MIN_TEXTS:
        raise TrainingError(
            f"the authorship judge needs at least {MIN_TEXTS} distinct messages of yours and of "
            f"your contacts in the training split (it has {len(owner)} and {len(contacts)})"
        )
    pipeline = make_pipeline(
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, lowercase=False, min_df=2
        ),
        LogisticRegression(max_iter=2000, class_weight="balanced", C=4.0, random_state=seed),
    )
    pipeline.fit(owner + contacts, [1] * len(owner) + [0] * len(contacts))
    return Judge(pipeline, (len(owner), len(contacts)))


def conversation_texts(examples: Iterable[Sequence[dict[str, str]]]) -> tuple[list[str], list[str]]:
    """The owner's (assistant) and the contacts' (user) texts of rendered examples' messages."""
    owner: list[str] = []
    contacts: list[str] = []
    for messages in examples:
        for message in messages:
            if message.get("role") == "assistant":
                owner.append(message["content"])
            elif message.get("role") == "user":
                contacts.append(message["content"])
    return owner, contacts


def _distinct(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(text.strip() for text in texts if text and text.strip()))
