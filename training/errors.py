"""Errors of the training stage; the CLI prints them as one line."""

from __future__ import annotations


class TrainingError(Exception):
    """A dataset, model or training problem the user can act on."""


class ModelLoadError(TrainingError):
    """The base model, tokenizer or adapter cannot be loaded as asked."""


def problems_text(problems: list[tuple[str, str]]) -> str:
    """(field, message) problems as one line, each named by its option field.

    The CLI checks options first and names its own flags instead; this is the line a caller
    of the library sees.
    """
    return "; ".join(f"{name} {message}" for name, message in problems)
