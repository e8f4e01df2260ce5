"""Secrets come from the environment or from files, never from the command line or the config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class SecretError(Exception):
    """A secret file that was named but cannot be read."""


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """Value of `NAME`, or the content of the file named by `NAME_FILE` (trailing newline removed)."""
    env = os.environ if env is None else env
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"{name}_FILE={file_name}: cannot read: {exc.strerror}") from None
    value = env.get(name)
    return value if value else None
