"""Argument checks of `kraken-server` that end before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from liquid_abt_drill.kraken_server.cli import main


def test_cli_rejects_a_bad_listen_address() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--listen", "nowhere"])
    assert info.value.code == 2


def test_cli_rejects_a_key_without_a_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("abc\n")
    with pytest.raises(SystemExit):
        main(["--api-key-file", str(key_file)])
