"""Pickle ``train_fn`` so that its tracebacks name the user's file, line and source.

cloudpickle (3.x) ships a function defined in a script or notebook by value and renames
its code's file to ``"<dynamic-code>"``, so a role's traceback says ``File
"<dynamic-code>", line 12, in train_fn``. :func:`dumps` pickles as cloudpickle does,
except that code objects keep their ``co_filename`` (they travel as :mod:`marshal`
data: the executors run the same Python as the driver, which by-value pickling needs
anyway) and the source lines of their file travel once with them, so a traceback in a
role shows the user's file, line and source even on a host that lacks the file.
:func:`cloudpickle.loads` (plain :func:`pickle.loads`) reads the result.
"""

from __future__ import annotations

import collections
import io
import linecache
import marshal
import types
from typing import Any

import cloudpickle

__all__ = ["dumps", "load_code"]

#: Source files larger than this (in characters) do not travel; the traceback then names
#: the file and line without the source.
SOURCE_LIMIT = 1 << 20


def load_code(data: bytes, filename: str, lines: tuple[str, ...] | None) -> types.CodeType:
    """Rebuild a code object :func:`dumps` pickled; make its source known to tracebacks.

    The driver's copy of the source is what runs, so it replaces whatever this host's
    :mod:`linecache` holds for ``filename`` (a mtime of None: never re-read from disk).
    """
    code = marshal.loads(data)
    if not isinstance(code, types.CodeType):
        raise TypeError(f"pickled code for {filename!r} is a {type(code).__name__}, not code")
    if lines:
        linecache.cache[filename] = (sum(len(line) for line in lines), None, list(lines), filename)
    return code


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler with a code reducer that keeps file names and sources."""

    def __init__(self, file: io.BytesIO) -> None:
        # One tuple of lines per file: pickle memoises it, so each file's source is
        # stored once however many code objects (nested functions, helpers) come from it.
        self._sources: dict[str, tuple[str, ...] | None] = {}
        # Set before the base initialiser: the C pickler reads its table there.
        self.dispatch_table = collections.ChainMap(
            {types.CodeType: self._reduce_code}, cloudpickle.Pickler.dispatch_table
        )
        super().__init__(file)

    def _source(self, filename: str) -> tuple[str, ...] | None:
        if filename not in self._sources:
            lines = tuple(linecache.getlines(filename))
            size = sum(len(line) for line in lines)
            self._sources[filename] = lines if lines and size <= SOURCE_LIMIT else None
        return self._sources[filename]

    def _reduce_code(self, code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
        filename = code.co_filename
        return load_code, (marshal.dumps(code), filename, self._source(filename))


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` (a function, usually) like :func:`cloudpickle.dumps`, keeping its
    code's file names and sources."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()
