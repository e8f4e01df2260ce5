"""The shipped runbooks (docs/runbooks/): every alert's runbook_url lands on a heading there, and
every link between the runbooks resolves (issue 13, point 1)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.harness import REPO
from tests.rules.shipped import alerts

RUNBOOKS = REPO / "docs" / "runbooks"
# The default base is this repository's docs; the `runbook_base_url` external label overrides it.
RUNBOOK_BASE_DEFAULT = "https://github.com/liquid-abt/liquid-abt-exporter/blob/main/docs/runbooks"
RUNBOOK_URL_PREFIX = (
    '{{ with $externalLabels.runbook_base_url }}{{ reReplaceAll "/+$" "" . }}'
    "{{ else }}" + RUNBOOK_BASE_DEFAULT + "{{ end }}/"
)
PAGES = ("bitcoin-purchase-failures.md", "exchange-api-failures.md", "liquid-abt-exporter.md")


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: the heading's text lower-cased, everything but
    letters, digits, spaces, hyphens and underscores dropped, spaces turned into hyphens; a
    repeated anchor gets -1, -2, ... Code fences are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # links: their text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_github_anchor_rules() -> None:
    text = "# Runbook: Exchange API failures\n## ExchangeApiDown\n```sh\n# not a heading\n```\n" + (
        "### Pause purchases\n### Pause purchases\n## 2. Retry `failed` purchases!\n"
    )
    assert github_anchors(text) == {
        "runbook-exchange-api-failures",
        "exchangeapidown",
        "pause-purchases",
        "pause-purchases-1",
        "2-retry-failed-purchases",
    }


def test_the_runbooks_are_shipped() -> None:
    assert sorted(p.name for p in RUNBOOKS.glob("*.md")) == sorted(PAGES)


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_runbook_url_lands_on_a_heading_of_a_shipped_runbook(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL_PREFIX), url
    page, _, anchor = url.removeprefix(RUNBOOK_URL_PREFIX).partition("#")
    assert page in PAGES, url
    assert anchor in github_anchors((RUNBOOKS / page).read_text()), (
        f"no heading #{anchor} in {page}"
    )


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_alert_has_its_own_section(rule: dict[str, Any]) -> None:
    """One heading per alert, named after it (kube-prometheus mixins' convention)."""
    anchor = rule["annotations"]["runbook_url"].rpartition("#")[2]
    # An escalation twin (issue 19, point 3) is its page: it links the page's section.
    page = (
        rule["alert"].removesuffix("Escalation")
        if rule["labels"].get("escalate")
        else rule["alert"]
    )
    assert anchor == page.lower()


@pytest.mark.parametrize("page", PAGES)
def test_links_between_the_runbooks_resolve(page: str) -> None:
    text = (RUNBOOKS / page).read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, page
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = RUNBOOKS / (target or page)
        assert path.is_file(), f"{page}: {link}"
        if anchor:
            assert anchor in github_anchors(path.read_text()), f"{page}: {link}"


def test_the_compose_prometheus_points_at_the_default_runbooks() -> None:
    """deploy/prometheus.yml sets the base explicitly, as an example: the same as the default."""
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert config["global"]["external_labels"]["runbook_base_url"] == RUNBOOK_BASE_DEFAULT
