"""The documentation holds together: every relative link in README.md and docs/*.md points to
a file (and heading) that exists, every docs page is reachable from the README, the README
stays a front door (at most 300 lines), and its GPU headline table is the one in docs/gpu.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_HTML_ID = re.compile(r"<a\s+id=\"([^\"]+)\"", re.I)


def _prose(text: str) -> str:
    """The text without code blocks and code spans (a link there is not a link)."""
    return _CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    found: set[str] = set(_HTML_ID.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        t
        for t in _LINK.findall(_prose(path.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)  # http:, https:, mailto:
    ]


def test_the_docs_exist() -> None:
    assert PAGES, "docs/*.md is empty"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        where, _, anchor = target.partition("#")
        dest = (doc.parent / where).resolve() if where else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or <a id> '{anchor}' in {dest.name}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move sections to docs/"
    assert lines[3].startswith("scripts/quickstart.sh"), "the first command must stay on top"
    assert lines[4].startswith("scripts/test.sh"), "the second command must stay on top"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def _table(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def test_readme_gpu_table_is_the_one_in_docs() -> None:
    header = "| config | metric | c=1 | c=4 | c=16 | c=64 |"
    readme = _table(README.read_text(), header)
    assert len(readme) > 2
    assert readme == _table((ROOT / "docs" / "gpu.md").read_text(), header)


@pytest.mark.parametrize(
    "doc",
    [*DOCS, *sorted(ROOT.glob("results/*/README.md")), *sorted(ROOT.glob("benchmarks/README*"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_absolute_machine_paths(doc: Path) -> None:
    found = re.findall(r"(?<![\w.~])/(?:work|home|root|tmp)/\S*", doc.read_text())
    assert not found, f"{doc.relative_to(ROOT)}: machine paths {found}"
