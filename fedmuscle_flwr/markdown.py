"""Sections of markdown documents that scripts own (docs/results.md, docs/benchmarks.md)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_markdown_section"]


def write_markdown_section(path: Path, tag: str, body: str, *, title: str = "# Results") -> None:
    """Replace (or append) the part of ``path`` between ``<!-- tag -->`` markers.

    Other sections are kept, so several scripts can each own a section of one document.
    """
    section = f"<!-- {tag} -->\n{body}\n<!-- /{tag} -->"
    text = path.read_text() if path.exists() else f"{title}\n"
    pattern = re.compile(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
