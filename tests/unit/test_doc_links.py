"""Every relative link in README.md and docs/*.md points to a file that exists,
and its #anchor to a heading of that file (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.helpers_state import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def prose(text: str, inline_code: bool = False) -> str:
    """The page without its code blocks, and without its inline code unless
    `inline_code`: links there are text."""
    lines: list[str] = []
    fence = None
    for line in text.splitlines():
        found = FENCE.match(line)
        if found and fence is None:
            fence = found.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            lines.append(line if inline_code else re.sub(r"`+[^`]*`+", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(page.read_text(encoding="utf-8"), inline_code=True).splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            base = slug(heading.group(1))
            name, number = base, 1
            while name in found:
                name, number = f"{base}-{number}", number + 1
            found.add(name)
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken: list[str] = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(REPO / "README.md")}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_the_slug_follows_github() -> None:
    assert slug("Secrets: `${env:NAME}`") == "secrets-envname"
    assert slug("7. A protected webhook") == "7-a-protected-webhook"
    assert slug("The admin's flow") == "the-admins-flow"
