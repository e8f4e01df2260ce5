"""Secrets come from the environment or from files, never from the command line or the config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SecretError(Exception):
    """A secret file that was named but cannot be read."""


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """Value of `NAME`, or the content of the file named by `NAME_FILE` (trailing newline removed)."""
    env = os.environ if env is None else env
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_bytes().decode("utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"{name}_FILE={file_name}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            # The offset only: the bytes around it are the secret.
            raise SecretError(
                f"{name}_FILE={file_name}: not UTF-8: byte 0x{exc.object[exc.start]:02x} at "
                f"position {exc.start}"
            ) from None
    value = env.get(name)
    return value if value else None


@dataclass(frozen=True)
class Secrets:
    """Every secret the process uses; `repr` shows which are set, never their values."""

    admin_token: str | None = field(default=None, repr=False)
    webhook_token: str | None = field(default=None, repr=False)
    webhook_basic_user: str | None = field(default=None, repr=False)
    webhook_basic_password: str | None = field(default=None, repr=False)
    kraken_api_key: str | None = field(default=None, repr=False)
    kraken_api_secret: str | None = field(default=None, repr=False)
    # Read-only keys of the secondary exchanges (balance only; they never trade).
    independentreserve_api_key: str | None = field(default=None, repr=False)
    independentreserve_api_secret: str | None = field(default=None, repr=False)
    btcmarkets_api_key: str | None = field(default=None, repr=False)
    btcmarkets_api_secret: str | None = field(default=None, repr=False)
    # Signs the customer-notice webhook's bodies (notices.webhook_url), HMAC-SHA256.
    notices_webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Secrets:
        return cls(
            admin_token=read_secret("LIQUID_ABT_ADMIN_TOKEN", env),
            webhook_token=read_secret("LIQUID_ABT_WEBHOOK_TOKEN", env),
            webhook_basic_user=read_secret("LIQUID_ABT_WEBHOOK_USER", env),
            webhook_basic_password=read_secret("LIQUID_ABT_WEBHOOK_PASSWORD", env),
            kraken_api_key=read_secret("KRAKEN_API_KEY", env),
            kraken_api_secret=read_secret("KRAKEN_API_SECRET", env),
            independentreserve_api_key=read_secret("INDEPENDENTRESERVE_API_KEY", env),
            independentreserve_api_secret=read_secret("INDEPENDENTRESERVE_API_SECRET", env),
            btcmarkets_api_key=read_secret("BTCMARKETS_API_KEY", env),
            btcmarkets_api_secret=read_secret("BTCMARKETS_API_SECRET", env),
            notices_webhook_secret=read_secret("LIQUID_ABT_NOTICES_WEBHOOK_SECRET", env),
        )
