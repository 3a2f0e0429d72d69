"""A griffe extension for the API reference: the docstrings' reStructuredText as Markdown.

headstart's docstrings are read with ``help()`` and in editors as much as on the site, so they keep
a few reStructuredText habits that Markdown would show as raw text. This extension rewrites them
when the site is built, never in the source:

* Sphinx roles (``:class:`~headstart.config.RunSpec```, ``:func:`fit_stage```) become
  cross-references that link when the target is in the API reference and read as code when it is
  not (a private helper, an outside library);
* simple tables (columns under rows of ``=====``) become Markdown tables;
* section titles underlined with ``----`` or ``====`` become bold lines (a heading inside a
  docstring would break the page's outline), and a paragraph's closing ``::`` a colon.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")


def _scopes(obj: griffe.Object) -> list[griffe.Object]:
    scopes = []
    current: griffe.Object | None = obj if obj.kind in (griffe.Kind.MODULE, griffe.Kind.CLASS) else obj.parent
    while current is not None:
        scopes.append(current)
        current = current.parent
    return scopes


def _resolve(obj: griffe.Object, name: str) -> str:
    if name.startswith("headstart"):
        return name
    head, _, rest = name.partition(".")
    for scope in _scopes(obj):
        try:
            found = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError, ValueError):
            continue
        return f"{found}.{rest}" if rest else found
    return name


BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")
UNDERLINE = re.compile(r"^ *(?:-{3,}|={3,}|~{3,}) *$")


def _cells(line: str, starts: list[int]) -> list[str]:
    bounds = [*starts[1:], None]
    return [line[start:end].strip().replace("|", "\\|") for start, end in zip(starts, bounds, strict=True)]


def _table(lines: list[str], indent: str) -> list[str]:
    """A reStructuredText simple table (its border lines included) as Markdown table lines."""
    starts = [match.start() for match in re.finditer(r"=+", lines[0])]
    borders = [index for index, line in enumerate(lines) if BORDER.match(line)]
    header = [_cells(line, starts) for line in lines[borders[0] + 1 : borders[1]] if line.strip()]
    rows: list[list[str]] = []
    for line in lines[borders[1] + 1 : borders[-1]]:
        if not line.strip():
            continue
        cells = _cells(line, starts)
        if rows and not cells[0]:  # a blank first column continues the row above
            rows[-1] = [f"{above} {below}".strip() for above, below in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    titles = header[0] if header else [""] * len(starts)

    def row(cells: list[str]) -> str:
        return indent + "| " + " | ".join(cells) + " |"

    return [row(titles), row(["---"] * len(starts)), *(row(cells) for cells in rows)]


def _markdown_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        border = BORDER.match(line)
        if border:
            ends = [n for n in range(index + 1, len(lines)) if BORDER.match(lines[n])]
            if len(ends) >= 2:
                end = ends[1]
                out.extend(_table(lines[index : end + 1], border["indent"]))
                index = end + 1
                continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and UNDERLINE.match(following) and not BORDER.match(following):
            out.extend([f"**{line.strip()}**", ""])
            index += 2
            continue
        out.append(line[:-1] if line.endswith("::") and not line.strip() == "::" else line)
        index += 1
    return "\n".join(out)


def _rewrite(obj: griffe.Object) -> None:
    docstring = obj.docstring
    if docstring is None:
        return
    docstring.value = _markdown_blocks(docstring.value)
    if ":`" not in docstring.value:
        return

    def link(match: re.Match[str]) -> str:
        target = match["target"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<path>[^>]+)>", target)
        if explicit:
            title, path = explicit["title"], explicit["path"].lstrip("~")
        else:
            path = target.lstrip("~").rstrip("()")
            title = path.rsplit(".", 1)[-1] if target.startswith("~") else path
        identifier = _resolve(obj, path)
        return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'

    docstring.value = ROLE.sub(link, docstring.value)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring once the whole package is loaded (names then resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        pending: list[griffe.Object] = [pkg]
        seen: set[int] = set()
        while pending:
            obj = pending.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            _rewrite(obj)
            pending.extend(member for member in obj.members.values() if not member.is_alias)
