"""Read manifests: files, folders and YAML text.

Refuses what is not a manifest before parsing it: files over 2 MB, special files (a FIFO
is never opened), binary or non-UTF-8 content. Parsing is ``yamlsafe.parse``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from meshlab.resources.yamlsafe import Document, parse

MAX_FILE_BYTES = 2 * 1024 * 1024

INLINE = "(inline YAML)"

Source = str | Path | Sequence[str | Path]


def _decode(data: bytes, label: str) -> tuple[str | None, str | None]:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, f"{label}: the file is UTF-16 text; save it as UTF-8"
    if b"\x00" in data:
        return None, f"{label}: this is a binary file (it contains NUL bytes), not YAML text"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        byte = data[err.start]
        return None, (
            f"{label}: not UTF-8 text (byte 0x{byte:02x} at offset {err.start}); "
            "is this a binary file?"
        )


def _too_big(label: str, size: int) -> str:
    return (
        f"{label}: the manifest is {size / 1024 / 1024:.1f} MB; MeshLab reads manifests of "
        f"at most {MAX_FILE_BYTES // 1024 // 1024} MB"
    )


def read_file(path: Path, label: str) -> tuple[str | None, str | None]:
    """The file's text, or a problem line."""
    try:
        info = path.stat()  # before opening: opening a FIFO would block
        if not stat.S_ISREG(info.st_mode):
            return None, f"{label}: not a regular file"
        if info.st_size > MAX_FILE_BYTES:
            return None, _too_big(label, info.st_size)
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return None, f"{label}: cannot read the file: {err.strerror or err}"
    if len(data) > MAX_FILE_BYTES:
        return None, _too_big(label, len(data))
    return _decode(data, label)


def is_yaml_text(value: str) -> bool:
    """A string is YAML text (not a path) if it has a newline or starts like a manifest."""
    stripped = value.lstrip()
    return "\n" in value or stripped.startswith(("apiVersion", "{"))


def _texts(source: Any) -> Iterator[tuple[str, str | None, str | None]]:
    """(label, text, problem) for every input in ``source``, in order."""
    is_list = isinstance(source, Sequence) and not isinstance(source, str | bytes)
    items = list(source) if is_list else [source]
    if not items:
        yield "", None, "no manifests given: pass a file, a folder or YAML text"
    inline = 0
    for item in items:
        if isinstance(item, str) and is_yaml_text(item):
            inline += 1
            label = INLINE if inline == 1 else f"(inline YAML #{inline})"
            size = len(item.encode("utf-8", "surrogatepass"))
            if size > MAX_FILE_BYTES:
                yield label, None, _too_big(label, size)
            elif "\x00" in item:
                yield label, None, f"{label}: the text contains NUL characters; it is not YAML"
            else:
                yield label, item, None
            continue
        if not isinstance(item, str | Path) or (isinstance(item, str) and not item.strip()):
            yield "", None, f"expected a file, a folder or YAML text, got {item!r}"
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            if not files:
                yield str(item), None, f"{item}: the folder has no .yaml or .yml files"
            for file in files:
                yield (str(file), *read_file(file, str(file)))
        elif path.exists():
            yield (str(item), *read_file(path, str(item)))
        else:
            yield str(item), None, f"{item}: no such file or folder"


def read_documents(source: Source) -> Iterator[tuple[str, list[Document], list[str]]]:
    """For each input, in order: (label, its non-empty documents, problems reading it).

    Problems that end the reading of a text (a syntax error) come after the documents
    read before them, so callers can report everything in file order."""
    for label, text, problem in _texts(source):
        if problem:
            yield label, [], [problem]
        else:
            docs, bad = parse(text or "", label)
            yield label, docs, bad
