"""User-facing errors.

Every error a user can cause (bad config, missing file, unknown plugin...) is an
:class:`SsltkError` whose message is one line naming the culprit and the fix. The CLI prints
that line and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SsltkError(Exception):
    """An error caused by the user's input, with a one-line message that says how to fix it."""

    exit_code = 1


class ConfigError(SsltkError):
    """A configuration value is invalid (message starts with the field path)."""

    exit_code = 2


class PluginError(SsltkError):
    """A plugin is missing, broken or misbehaving."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(value) >= 3 and c.startswith(value)][:1]
    return f" Did you mean '{close[0]}'?" if close else ""
