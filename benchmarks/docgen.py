"""Generated blocks in Markdown files: every number the docs quote comes from a committed file.

A block is the text between `<!-- begin: NAME -->` and `<!-- end: NAME -->`; `render` replaces
each block's text with what the generator of that name returns (a function of the repo's root).
`python -m benchmarks report` renders README.md and docs/*.md; `--check` fails on any difference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

BLOCK = re.compile(r"(<!-- begin: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


class UnknownBlockError(KeyError):
    """A file names a block that no generator makes."""


def render(text: str, generators: dict[str, Callable[[Path], str]], root: Path, where: str = "<text>") -> str:
    """`text` with every block's body replaced by its generator's output (ending in one newline)."""

    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in generators:
            raise UnknownBlockError(f"{where}: block {name!r} has no generator (known: {', '.join(sorted(generators))})")
        body = generators[name](root).rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


def documents(root: Path) -> list[Path]:
    """The Markdown files whose blocks are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks_in(text: str) -> list[str]:
    """The names of the blocks in `text`, in order."""
    return [m.group("name") for m in BLOCK.finditer(text)]
