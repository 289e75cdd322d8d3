"""Pieces shared by the commands' options.

The exit status follows one rule (`vidt --help` states it): a mistake in the command line
itself exits 2, whether click or vidt finds it; a command line that is right but names
something that is wrong (a file, a dataset, an env, a server, the machine) exits 1."""

from __future__ import annotations

import math
import os

import click


class DiskPath(click.Path):
    """A path option. What click checks of it (that it exists, is a file or a directory as
    the option needs, can be read or written) is about what the path names, not about the
    command line: exit status 1, as when a dataset or model named elsewhere is missing
    (click's own check would make it a usage error, 2)."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            raise click.ClickException(e.format_message()) from None


class InputPath(DiskPath):
    """An input file or directory that must exist."""

    def __init__(self, **kwargs):
        super().__init__(exists=True, **kwargs)


class FiniteFloat(click.ParamType):
    """A float that is a number: NaN and infinities are refused as click refuses "abc"."""

    name = "float"

    def convert(self, value, param, ctx):
        x = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return x


class ServerAddress(click.ParamType):
    """HOST:PORT (or a gRPC target), checked as the client checks it: a missing port is a
    mistake in the command line."""

    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        from vidt.errors import VidtError
        from vidt.serving.client import check_address

        try:
            return check_address(value)
        except VidtError as e:
            self.fail(str(e), param, ctx)


def debug_enabled() -> bool:
    """VIDT_DEBUG=1 (or true, yes, on) shows tracebacks; 0, false or empty does not."""
    return os.environ.get("VIDT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
