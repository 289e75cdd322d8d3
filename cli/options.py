"""Pieces shared by the commands' options."""

from __future__ import annotations

import os

import click


class InputPath(click.Path):
    """An input file or directory that must exist. A missing one is a problem with the input,
    exit status 1, as when a dataset or model named elsewhere is missing (click's own check
    would make it a usage error, 2)."""

    def __init__(self, **kwargs):
        super().__init__(exists=True, **kwargs)

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            raise click.ClickException(e.format_message()) from None


def debug_enabled() -> bool:
    """VIDT_DEBUG=1 (or true, yes, on) shows tracebacks; 0, false or empty does not."""
    return os.environ.get("VIDT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
