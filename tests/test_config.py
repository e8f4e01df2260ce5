"""Each kind of bad config gives its expected error text; check-config exits 0 or 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import (
    ConfigError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)

TESTDATA = Path(__file__).parent / "testdata"

# The whole message after "<file>: ", as a user reads it (blackbox_exporter's testdata/ style).
INVALID = "invalid configuration:\n  "
EXPECTED_ERRORS = {
    "invalid-unknown-key.yml": INVALID + "collectors.timout: unknown key",
    "invalid-duration.yml": INVALID + (
        "collectors.interval: invalid duration 'soon': use a number with a unit, like 30s, 5m or 1h"
    ),
    "invalid-timeout-over-interval.yml": INVALID + (
        "collectors: timeout (10s) is longer than interval (5s): refreshes would overlap"
    ),
    "invalid-reason-class.yml": INVALID + (
        "purchases.failure_reasons: unknown failure reason class 'meteor_strike': use one of "
        "exchange_unavailable, rate_limited, auth, network_timeout, insufficient_funds, "
        "invalid_amount, maintenance"
    ),
    "invalid-pattern.yml": INVALID + (
        "purchases.failure_reasons: invalid pattern '(unclosed' for 'auth': missing ), "
        "unterminated subpattern at position 0"
    ),
    "invalid-exchange.yml": INVALID + (
        "exchanges: invalid exchange name 'Kraken': lower-case letters, digits and _, not 'other'"
    ),
    "invalid-password-in-dsn.yml": INVALID + (
        "database.dsn: the DSN contains a password: put it in DATABASE_PASSWORD or "
        "DATABASE_PASSWORD_FILE instead"
    ),
    "invalid-yaml.yml": (
        "not valid YAML: while parsing a flow sequence\n"
        '  in "<unicode string>", line 1, column 13:\n'
        "    collectors: [1, 2\n"
        "                ^\n"
        "expected ',' or ']', but got '<stream end>'\n"
        '  in "<unicode string>", line 2, column 1:\n'
        "    \n"
        "    ^"
    ),
    "invalid-pool-size.yml": INVALID + (
        "database.pool_max_size: Input should be greater than or equal to 2 (got 0)"
    ),
    "invalid-top-level.yml": "the top level must be a mapping, got list",
    "invalid-notice-template.yml": INVALID + (
        "notices.templates.purchase_failed.message: unknown field {amount} in template 'Your "
        "purchase of {amount} failed.': use {exchange}, {routed_to}, {estimated_resolution}, "
        "{next_retry}, {support_contact}, {started_at}"
    ),
    "invalid-notice-blip.yml": INVALID + (
        "notices: follow_up (15m) must be longer than blip (30m): purchase_failed is planned "
        "after the blip"
    ),
    # `exchanges: [kraken]` and a comment holding é in Latin-1 (byte 0xe9).
    "invalid-not-utf8.yml": (
        "not UTF-8: byte 0xe9 at position 25 (line 2, column 6); save the file as UTF-8"
    ),
    "invalid-slo-objective.yml": INVALID + (
        "slo.purchases.0.objective: objective 90 leaves an error budget of 10%: a 14.4x burn "
        "would need more than every purchase to fail; use 93.06 or more"
    ),
    "invalid-slo-exchange.yml": INVALID + (
        "(top level): slo.purchases.0.exchanges: unknown exchange 'coinjar': not in exchanges "
        "(kraken)"
    ),
    "invalid-slo-period.yml": INVALID + (
        "slo.purchases.0.period: period 1d: a whole number of 5m, at least the 3d window of the "
        "slowest burn alert (got '1d')"
    ),
    "invalid-slo-two-objectives.yml": INVALID + (
        "slo.purchases: exchange 'kraken' has more than one objective"
    ),
    "invalid-slo-windows.yml": INVALID + (
        "(top level): slo.purchases: the objectives are derived from the 5m purchase window: "
        "add 5m to purchases.windows (got 15m, 1h), or set slo.purchases to [] for none"
    ),
    "invalid-exchange-role.yml": INVALID + (
        "(top level): exchanges.independentreserve.role: unknown role 'backup': use primary or "
        "secondary"
    ),
    "invalid-exchange-two-primaries.yml": INVALID + (
        "(top level): exchanges: 2 exchanges have role primary (kraken, btcmarkets): give "
        "exactly one"
    ),
    "invalid-exchange-secondary-disabled.yml": INVALID + (
        "(top level): exchanges.independentreserve: role secondary but "
        "independentreserve.enabled is false: enable its section (independentreserve: "
        "{enabled: true})"
    ),
    "invalid-exchange-secondary-unknown.yml": INVALID + (
        "(top level): exchanges.coinjar: a secondary is probed and verified: use one of kraken, "
        "independentreserve, btcmarkets"
    ),
    "invalid-exchange-entry.yml": INVALID + (
        "(top level): exchanges.kraken: expected {role: primary} or {role: secondary}, got "
        "'primary'"
    ),
    "invalid-exchange-section-unlisted.yml": INVALID + (
        "(top level): btcmarkets.enabled is true but 'btcmarkets' is not in exchanges: add it, "
        "or disable the probe"
    ),
    "invalid-exchange-pair.yml": INVALID + (
        "btcmarkets.pair: invalid pair 'BTC/USD': BASE/AUD in upper case, like BTC/AUD "
        "(purchases are in AUD)"
    ),
    "invalid-failover-secondary.yml": INVALID + (
        "(top level): failover.secondaries.0: 'independentreserve' is not a secondary exchange: "
        "give it the role in exchanges ({independentreserve: {role: secondary}})"
    ),
    "invalid-failover-deviation.yml": INVALID + (
        "failover.max_price_deviation: Input should be less than 1 (got 1.5)"
    ),
    "invalid-failover-enabled.yml": INVALID + (
        "(top level): failover: enabled is true but no secondary is configured: give one the "
        "role secondary in exchanges (e.g. independentreserve: {role: secondary}), or set "
        "enabled to false"
    ),
}  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED_ERRORS.items()))
def test_invalid_config_names_the_location_and_the_value(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(TESTDATA / name)
    assert str(error.value) == f"{TESTDATA / name}: {expected}"


def test_a_password_in_the_dsn_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(TESTDATA / "invalid-password-in-dsn.yml")
    assert "hunter2" not in str(error.value)


def test_every_invalid_fixture_has_an_expected_error() -> None:
    assert {p.name for p in TESTDATA.glob("invalid-*.yml")} == set(EXPECTED_ERRORS)


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(TESTDATA / "nowhere.yml")
    assert str(error.value) == f"{TESTDATA / 'nowhere.yml'}: cannot read: No such file or directory"


def test_defaults_follow_the_runbooks() -> None:
    config = load_config(None)
    assert config.purchases.windows == [300, 900, 3600]
    assert config.purchases.retry_max_count == 3
    assert config.purchases.retry_excluded_reasons == ["insufficient_funds", "invalid_amount"]
    # The runbook's health check runs every 30 s; the probe runs three rounds in that time, which
    # the stop-time target on probe evidence needs (docs/incident-simulator.md).
    assert config.kraken.probe_interval == 10 and 30 % config.kraken.probe_interval == 0
    assert config.kraken.timeout == 5
    assert config.kraken.slow_threshold == 5
    [objective] = config.slo.purchases
    assert (objective.exchanges, objective.objective, objective.period) == (None, 98, 30 * 86400)


def test_full_example_is_valid() -> None:
    config = load_config(TESTDATA / "valid-full.yml")
    assert config.collectors.snapshot_expiry == 300
    assert (config.primary, config.secondaries) == ("kraken", ["independentreserve"])
    assert config.notices.templates["incident_ongoing"].channels == ["app_notification"]


def test_the_list_of_exchanges_makes_every_one_primary() -> None:
    config = parse_config({"exchanges": ["kraken", "coinjar"]})
    assert config.exchanges == ["kraken", "coinjar"]
    assert config.roles() == {"kraken": "primary", "coinjar": "primary"}
    assert (config.primary, config.secondaries) == (None, []), "several primaries: no failover"
    assert parse_config({}).primary == "kraken"


def test_a_mapping_of_exchanges_gives_roles_in_config_order() -> None:
    config = parse_config({
        "exchanges": {"btcmarkets": {"role": "secondary"}, "kraken": {"role": "primary"},
                      "independentreserve": {"role": "secondary"}},
        "btcmarkets": {"enabled": True}, "independentreserve": {"enabled": True},
    })  # fmt: skip
    assert config.exchanges == ["btcmarkets", "kraken", "independentreserve"]
    assert config.primary == "kraken"
    assert config.secondaries == ["btcmarkets", "independentreserve"]
    assert config.independentreserve.pair == "BTC/AUD"
    assert config.independentreserve.verify_interval == 15
    assert config.model_copy().roles() == config.roles()


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (2, 2)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"), [(300, "5m"), (900, "15m"), (3600, "1h"), (90, "90s")]
)
def test_window_labels(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_check_config_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config.file", str(TESTDATA / "valid-full.yml")]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    invalid = TESTDATA / "invalid-unknown-key.yml"
    assert main(["check-config", "--config.file", str(invalid)]) == 1
    expected = f"error: {invalid}: {EXPECTED_ERRORS[invalid.name]}\n"
    assert capsys.readouterr().err == expected


def test_config_file_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    invalid = TESTDATA / "invalid-duration.yml"
    monkeypatch.setenv("LIQUID_ABT_CONFIG_FILE", str(invalid))
    assert main(["check-config"]) == 1
    assert capsys.readouterr().err == f"error: {invalid}: {EXPECTED_ERRORS[invalid.name]}\n"


def test_bad_log_level_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--log.level", "loud"]) == 2
    assert capsys.readouterr().err.endswith(
        "error: --log.level 'loud': use one of debug, info, warn, error\n"
    )


def test_check_config_names_a_file_that_is_not_utf8_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    invalid = TESTDATA / "invalid-not-utf8.yml"
    assert main(["check-config", "--config.file", str(invalid)]) == 1
    assert capsys.readouterr().err == f"error: {invalid}: {EXPECTED_ERRORS[invalid.name]}\n"


def test_a_dump_says_the_roles_and_parses_back() -> None:
    """A reload compares dumps: a changed role is a changed key (it needs a restart)."""
    config = load_config(TESTDATA / "valid-full.yml")
    dumped = config.model_dump(mode="json")
    assert dumped["exchanges"] == {
        "kraken": {"role": "primary"}, "independentreserve": {"role": "secondary"},
    }  # fmt: skip
    assert parse_config(dumped).roles() == config.roles()
    assert parse_config({}).model_dump()["exchanges"] == ["kraken"], "the list form stays a list"
