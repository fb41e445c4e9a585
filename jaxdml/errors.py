"""Errors a user can fix. Entry points print them as one line (no traceback) and exit with status 1."""

from __future__ import annotations


class UserError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot run, with a message that says how to fix it."""
