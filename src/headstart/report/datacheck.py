"""The report's "Data check" section: what ``data-check.json`` found, with thumbnails.

Rendered from files only: the JSON the data check wrote (:mod:`headstart.data.datacheck`) and the
image files it names, each shrunk to a thumbnail of at most :data:`THUMB_SIDE` pixels and embedded
as a PNG ``data:`` URI, like every image of the report. A file that can no longer be read (moved,
deleted) is named without its picture. Groups under two labels come first; the page shows at most
:data:`MAX_GROUPS` groups and :data:`MAX_ITEMS` images per other finding, and says how many more
the JSON lists.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from headstart.data.findings import CHECK_FILE
from headstart.errors import HeadstartError
from headstart.files import read_json

THUMB_SIDE = 96
"""Longer side of a thumbnail, in pixels."""
MAX_GROUPS = 20
MAX_ITEMS = 12


def _thumbnail(path: str) -> str:
    """An ``<img>`` of the file at ``path`` shrunk to :data:`THUMB_SIDE`, or a note when it cannot be read."""
    from headstart.data.images import read_image

    try:
        image = read_image(path, min_side=THUMB_SIDE)
    except HeadstartError:
        return '<span class="muted">(cannot be read now)</span>'
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    alt = html.escape(Path(path).name)
    return f'<img alt="{alt}" style="display:inline;margin:0" src="data:image/png;base64,{data}">'


def _shown(path: str, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path


def _figure(image: dict[str, Any], root: Path | None, note: str = "") -> str:
    label = f" ({html.escape(image['label'])})" if image.get("label") else ""
    caption = f"{html.escape(_shown(image['path'], root))}{label}<br>{image['width']}×{image['height']}{note}"
    return (
        '<figure style="display:inline-block;margin:0 .6rem .6rem 0;vertical-align:top;max-width:9rem">'
        f'{_thumbnail(image["path"])}<figcaption class="muted">{caption}</figcaption></figure>'
    )


def _more(total: int, shown: int) -> str:
    return f'<p class="muted">… and {total - shown} more ({CHECK_FILE} lists them all).</p>' if total > shown else ""


def section(folder: str | Path) -> str:
    """The section's HTML for ``folder`` (its ``data-check.json``); "" when it has none."""
    path = Path(folder) / CHECK_FILE
    if not path.is_file():
        return ""
    try:
        check = read_json(path)
    except HeadstartError as error:
        return f'<h2>Data check</h2><p class="muted">{html.escape(str(error))}</p>'
    source = check.get("source") or {}
    root = None
    if source.get("path"):
        root = Path(source["path"]) if source.get("kind") == "folder" else Path(source["path"]).parent
    parts = ["<h2>Data check</h2>", f"<p>{html.escape(check.get('summary', ''))}</p>"]
    classes = check.get("classes") or {}
    if classes:
        counts = ", ".join(f"{html.escape(name)} {count}" for name, count in classes.items())
        ratio = check.get("imbalance")
        parts.append(
            f'<p class="muted">Images per class: {counts}'
            + (f"; largest / smallest {ratio:.2f}" if ratio is not None else "")
            + (f"; {check['unlabelled']} unlabelled" if check.get("unlabelled") else "")
            + ".</p>"
        )
    copies = sorted(check.get("copies") or [], key=lambda group: len(group.get("labels", [])) <= 1)
    if copies:
        parts.append("<h3>Copies</h3>")
        parts.append(
            '<p class="muted">Each row is one group of copies (exact: the same bytes; near: the same picture '
            "resized, re-encoded or slightly changed). A group stays in one split, so no copy of a test image "
            "is trained on. A group under two labels holds one picture labelled twice: one label is wrong.</p>"
        )
        for group in copies[:MAX_GROUPS]:
            labels = group.get("labels") or []
            title = (
                f"<b>under {len(labels)} labels: {html.escape(', '.join(labels))}</b>"
                if len(labels) > 1
                else html.escape(group["kind"])
            )
            distance = ""
            if group["kind"] == "near":
                bits = group["distance"]
                distance = ", identical hashes" if bits == 0 else f", hashes up to {bits} bits apart"
                if group.get("exact_copies"):
                    distance += f", {group['exact_copies']} exact cop{'y' if group['exact_copies'] == 1 else 'ies'}"
            parts.append(f'<p class="muted">{title} — {len(group["images"])} images{distance}</p><div>')
            parts.extend(_figure(image, root) for image in group["images"][:MAX_ITEMS])
            parts.append("</div>")
        parts.append(_more(len(copies), MAX_GROUPS))
    for key, title in (("tiny", "Tiny images"), ("extreme_aspect", "Extreme aspect ratios")):
        images = check.get(key) or []
        if images:
            parts.append(f"<h3>{title}</h3><div>")
            parts.extend(_figure(image, root) for image in images[:MAX_ITEMS])
            parts.append("</div>" + _more(len(images), MAX_ITEMS))
    for key, title in (("unreadable", "Unreadable files"), ("not_read", "Folders and links not read")):
        rows = check.get(key) or []
        if rows:
            items = "".join(
                f"<li><code>{html.escape(_shown(row['path'], root))}</code>: {html.escape(row['reason'])}</li>"
                for row in rows[:MAX_ITEMS]
            )
            parts.append(f"<h3>{title}</h3><ul>{items}</ul>" + _more(len(rows), MAX_ITEMS))
    return "\n".join(parts)


__all__ = ["section"]
