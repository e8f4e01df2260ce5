"""The landing page at `/` as a person sees it: loaded in headless Chromium (Debian's `chromium`
and `chromium-driver`, driven with selenium) from a running exporter that has no admin token.
The screenshot is saved under tests/artifacts/ for a person to look at.

Also, in process: the page while the database is away, and without a docs link configured.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Iterator

import asyncpg
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from exporter import __version__
from exporter.config import parse_config
from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from exporter.web.pages import alert_runbook
from tests.admin_exporter import admin_config, running_exporter
from tests.harness import REPO, RULE_FILES, wait_until
from tests.test_docs_links import anchors

ARTIFACTS = REPO / "tests" / "artifacts"
DOCS_URL = "https://docs.example.com/liquid-abt-exporter/"
RUNBOOKS = "https://wiki.example.com/liquid-abt/runbooks"  # configured with a trailing /
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
]  # fmt: skip
INSTALL_HINT = "install the Debian packages `chromium` and `chromium-driver` (.ci/run does)"


def require(*names: str) -> str:
    """The first of `names` on PATH; a missing browser fails the test, it is never skipped."""
    for name in names:
        if path := shutil.which(name):
            return path
    pytest.fail(f"{' / '.join(names)} not found: {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium", "chromium-browser")
    profile = tempfile.mkdtemp(prefix="liquid-abt-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium must not try to download one.
    driver = webdriver.Chrome(options=options, service=Service(require("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


INCIDENT_SQL = """
INSERT INTO liquid_abt.circuit_breakers (exchange, state, manual_hold, failure_count,
                                         call_count, state_changed_at)
VALUES ('kraken', 'open', true, 2, 3, now() - interval '20 minutes')
ON CONFLICT (exchange) DO UPDATE SET state = excluded.state, manual_hold = excluded.manual_hold,
    failure_count = excluded.failure_count, call_count = excluded.call_count,
    state_changed_at = excluded.state_changed_at;
INSERT INTO liquid_abt.exchange_controls (exchange, purchases_paused, pause_reason, paused_at,
                                          manual_hold)
VALUES ('kraken', true, 'secret-looking reason: KRAKEN-KEY-1234', now() - interval '12 minutes',
        true)
ON CONFLICT (exchange) DO UPDATE SET purchases_paused = excluded.purchases_paused,
    pause_reason = excluded.pause_reason, paused_at = excluded.paused_at,
    manual_hold = excluded.manual_hold;
INSERT INTO liquid_abt.incidents (exchange, phase, cause, started_at)
VALUES ('kraken', 'down', 'maintenance', now() - interval '20 minutes')
ON CONFLICT (exchange) DO UPDATE SET phase = excluded.phase, cause = excluded.cause,
    started_at = excluded.started_at;
INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, amount_aud, next_attempt_at,
                                    enqueued_at)
SELECT 'p' || n, 'kraken', 20, now() + interval '1 hour', now() - interval '10 minutes'
FROM generate_series(1, 3) AS n;
-- What Alertmanager reported: maintenance firing; an ExchangeApiDown that fired and resolved.
INSERT INTO liquid_abt.notifications (fingerprint, status, starts_at, alertname, exchange, labels,
                                      processed_at)
VALUES ('fp-maintenance', 'firing', now() - interval '19 minutes', 'ExchangeMaintenance',
        'kraken', '{"alertname": "ExchangeMaintenance", "exchange": "kraken"}', now()),
       ('fp-down', 'firing', now() - interval '30 minutes', 'ExchangeApiDown', 'kraken',
        '{"alertname": "ExchangeApiDown", "exchange": "kraken"}', now()),
       ('fp-down', 'resolved', now() - interval '30 minutes', 'ExchangeApiDown', 'kraken',
        '{"alertname": "ExchangeApiDown", "exchange": "kraken"}', now());
-- 2 of 8 settled purchases failed in the last 15 minutes (a pending one does not count).
INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
SELECT 't' || n, 50, CASE WHEN n <= 2 THEN 'failed' WHEN n = 9 THEN 'pending' ELSE 'completed' END,
       CASE WHEN n <= 2 THEN 'Kraken API maintenance' END, now() - interval '5 minutes'
FROM generate_series(1, 9) AS n;
"""


async def _arrange(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(INCIDENT_SQL)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def exporter_url(
    pg_server_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An exporter with no admin token, kraken in an outage held by an admin."""
    config = admin_config(web={"docs_url": DOCS_URL, "runbook_base_url": RUNBOOKS + "/"})
    with running_exporter(pg_server_dsn, template_db, tmp_path_factory.mktemp("page"),
                          config_yaml=config, token=None) as running:  # fmt: skip
        asyncio.run(_arrange(running.dsn))
        yield running.url


def cells(browser: webdriver.Chrome, exchange: str) -> list[str]:
    row = browser.find_element(By.XPATH, f"//tbody/tr[th[normalize-space()='{exchange}']]")
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def test_the_landing_page_shows_each_exchange_s_state(
    browser: webdriver.Chrome, exporter_url: str
) -> None:
    def measured() -> bool:  # the purchases collector refreshes every second
        browser.get(f"{exporter_url}/")
        return cells(browser, "kraken")[1] == "25.0 %"

    wait_until(measured, timeout=60, what="the page showing the failure ratio")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "landing-page.png"))
    assert browser.title == "LIQUID ABT exporter"
    text = browser.find_element(By.TAG_NAME, "body").text
    assert f"Version {__version__}." in text
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text == (
        "Purchases paused on kraken."
    )
    purchases, ratio, incident, breaker, rate, queue, firing = cells(browser, "kraken")
    # Ages are floored to the minute: a slow machine may read a minute more.
    assert re.fullmatch(
        r"paused\npaused 1[23] min ago\nmanual hold: an admin resumes them\nhow to resume",
        purchases,
    )
    assert ratio == "25.0 %"  # 2 failed of 8 settled, as liquid_abt_purchase_failure_ratio
    assert incident.splitlines() == ["down", "cause: maintenance",
                                     "purchases stopped until recovery is verified",
                                     "runbook"]  # fmt: skip
    assert breaker.splitlines() == ["OPEN", "2 replicas see the API down", "held open by an admin"]
    assert rate == "100 %" and re.fullmatch(r"3 waiting\noldest 1[01] min ago", queue)
    # The alert still firing, with its age; the resolved one is gone.
    assert re.fullmatch(r"ExchangeMaintenance\nsince (19|20) min ago", firing), firing
    assert cells(browser, "independent_reserve") == [
        "flowing", "0.0 %", "normal", "CLOSED", "100 %", "empty", "none",
    ]  # fmt: skip


def test_the_page_is_readable(browser: webdriver.Chrome, exporter_url: str) -> None:
    browser.get(f"{exporter_url}/")
    open_badge = browser.find_element(By.XPATH, "//span[@class='badge bad' and text()='OPEN']")
    assert open_badge.value_of_css_property("background-color") == "rgba(179, 38, 30, 1)"
    assert open_badge.value_of_css_property("color") == "rgba(255, 255, 255, 1)"
    body = browser.find_element(By.TAG_NAME, "body")
    assert float(body.value_of_css_property("font-size").removesuffix("px")) >= 16
    fits = browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )
    assert fits, "no sideways scrolling at 1280 pixels"
    assert browser.find_elements(By.TAG_NAME, "script") == [], "plain HTML, no JavaScript"


def test_each_state_links_its_runbook_section(browser: webdriver.Chrome, exporter_url: str) -> None:
    browser.get(f"{exporter_url}/")
    row = browser.find_element(By.XPATH, "//tbody/tr[th[normalize-space()='kraken']]")
    links = {a.text: a.get_attribute("href") for a in row.find_elements(By.TAG_NAME, "a")}
    assert links == {
        "how to resume": f"{RUNBOOKS}/exchange-api-failures.md#resume-purchases",
        "runbook": f"{RUNBOOKS}/exchange-api-failures.md#exchangemaintenance",
        "ExchangeMaintenance": f"{RUNBOOKS}/exchange-api-failures.md#exchangemaintenance",
    }
    # Each section exists in the shipped runbooks.
    for href in links.values():
        page, _, heading = href.removeprefix(RUNBOOKS + "/").partition("#")
        assert heading in anchors(REPO / "docs" / "runbooks" / page), href


def test_every_shipped_alert_links_the_runbook_its_rule_names() -> None:
    """The page's alert -> runbook table agrees with each rule's runbook_url annotation."""
    checked = 0
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                url = " ".join(rule["annotations"]["runbook_url"].split())
                assert url.endswith("/" + str(alert_runbook(rule["alert"]))), rule["alert"]
                checked += 1
    assert checked > 20
    assert alert_runbook("SomeoneElsesAlert") is None


def test_the_links_lead_where_they_say(browser: webdriver.Chrome, exporter_url: str) -> None:
    browser.get(f"{exporter_url}/")
    links = {
        a.text: a.get_attribute("href")
        for a in browser.find_elements(By.CSS_SELECTOR, "ul.links a")
    }
    assert links == {
        "Metrics": f"{exporter_url}/metrics", "Health": f"{exporter_url}/-/healthy",
        "Readiness": f"{exporter_url}/-/ready", "Documentation": DOCS_URL,
    }  # fmt: skip
    browser.find_element(By.LINK_TEXT, "Metrics").click()
    assert "liquid_abt_build_info" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{exporter_url}/")
    browser.find_element(By.LINK_TEXT, "Readiness").click()
    assert browser.find_element(By.TAG_NAME, "body").text == "Ready."


def test_the_page_tells_no_more_than_metrics(browser: webdriver.Chrome, exporter_url: str) -> None:
    browser.get(f"{exporter_url}/")
    source = browser.page_source
    assert "KRAKEN-KEY-1234" not in source and "secret-looking reason" not in source
    assert "Bearer" not in source and "postgresql://" not in source


# ---- in process: the database away, no docs link ----


async def test_the_page_answers_while_the_database_is_away(aiohttp_client) -> None:
    nowhere = Connection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    config = parse_config({"kraken": {"enabled": False}, "database": {"connect_timeout": "1s"}})
    client = await aiohttp_client(create_app(config, nowhere, Secrets()))
    response = await client.get("/")
    assert response.status == 200
    page = await response.text()
    assert "State unavailable: the database does not answer" in page
    assert '<a href="/-/ready">' in page and "<table" not in page


async def test_without_a_docs_link_the_page_names_the_files(
    aiohttp_client, database: Connection
) -> None:
    config = parse_config({"kraken": {"enabled": False}})
    client = await aiohttp_client(create_app(config, database, Secrets()))
    page = await (await client.get("/")).text()
    assert "Purchases flowing on every exchange." in page
    assert "<code>README.md</code> and <code>docs/</code>" in page and "web.docs_url" in page
    assert ">Documentation</a>" not in page
