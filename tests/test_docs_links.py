"""Every relative link of the documentation leads somewhere: the file exists, and an anchor
(`file.md#heading`, `#heading`) is a heading of that file as GitHub spells its anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import REPO

DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "alerts" / "README.md", REPO / "grafana" / "README.md",
     *(REPO / "docs").rglob("*.md")]
)  # fmt: skip
# [text](target) and [text]: target; an image's ![alt](target) alike. Targets with a scheme
# (https:, mailto:) and autolinks <https://...> are not this test's.
INLINE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s+(\S+)", re.M)
FENCE = re.compile(r"^\s*```.*?^\s*```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats -1."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def links(path: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", path.read_text()))
    return INLINE.findall(text) + REFERENCE.findall(text)


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=[str(p.relative_to(REPO)) for p in DOCUMENTS])
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken(path) == []


def test_the_checker_names_each_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Deploy: docker compose\n\n## Deploy: docker compose\n\n"
        "[ok](#deploy-docker-compose) [ok](#deploy-docker-compose-1) [ok](b.md) `[not](x.md)`\n"
        "[gone](missing.md) [bad](#nowhere) [bad](b.md#nowhere) [web](https://example.com/x)\n"
        "```\n[in a block](ignored.md)\n```\n"
    )
    (tmp_path / "b.md").write_text("# B\n")
    assert broken(tmp_path / "a.md") == [
        f"missing.md: no such file {tmp_path / 'missing.md'}",
        "#nowhere: no heading #nowhere in a.md",
        "b.md#nowhere: no heading #nowhere in b.md",
    ]


def test_the_readme_stays_a_readme() -> None:
    """What it does, the quick start, the demo, pointers: the manual is docs/."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"
    # Readers cannot see the issue tracker the design came from. (alerts/README.md still cites
    # it in its design notes; its owner rewrites them.)
    for path in [p for p in DOCUMENTS if p != REPO / "alerts" / "README.md"]:
        assert not re.search(r"\bissues? \d+\b", path.read_text()), path
