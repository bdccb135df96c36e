"""Errors of the harvest stage; the CLI prints them as one line."""

from __future__ import annotations


class HarvestError(Exception):
    """A harvest or import problem the user can act on."""
