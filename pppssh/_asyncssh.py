"""Kept for modules not yet moved to asyncssh_compat (the one place asyncssh is imported)."""

from .asyncssh_compat import asyncssh as asyncssh
