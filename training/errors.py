"""Errors of the training stage; the CLI prints them as one line."""

from __future__ import annotations


class TrainingError(Exception):
    """A dataset, model or training problem the user can act on."""


class ModelLoadError(TrainingError):
    """The base model, tokenizer or adapter cannot be loaded as asked."""
