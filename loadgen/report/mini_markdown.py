"""The little Markdown the report's fixed sections use, as HTML (standard library only).

report.html has to be one self-contained file that opens anywhere, so its prose sections
(how to read the tables, which speedups are stable) are written once in Markdown and
converted here rather than through a Markdown package.
"""

from __future__ import annotations

import html
import re


def _inline(text: str) -> str:
    """``text`` escaped, with **bold** and `code` as <b> and <code>."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str) -> str:
    """'## ' headings, '- ' list items (with indented continuation lines), paragraphs,
    **bold** and `code`; nothing else."""
    out: list[str] = []
    item: list[str] | None = None
    in_list = False

    def flush() -> None:
        nonlocal item
        if item is not None:
            out.append(f"<li>{_inline(' '.join(item))}</li>")
            item = None

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("- "):
            flush()
            if not in_list:
                out.append("<ul>")
                in_list = True
            item = [s[2:]]
        elif s and item is not None and line.startswith("  "):
            item.append(s)
        else:
            flush()
            if in_list:
                out.append("</ul>")
                in_list = False
            if s.startswith("## "):
                out.append(f"<h2>{_inline(s[3:])}</h2>")
            elif s:
                out.append(f"<p>{_inline(s)}</p>")
    flush()
    if in_list:
        out.append("</ul>")
    return "\n".join(out)
