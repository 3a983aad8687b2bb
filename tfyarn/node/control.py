"""The control channel between a barrier task and its role process: JSON lines on pipes.

Task -> role: :class:`~tfyarn.node.messages.Setup`, then
:class:`~tfyarn.node.messages.Cluster` once the cluster is wired. Role -> task:
:class:`~tfyarn.node.messages.Hello` once the role's transport listener (if any) is bound.
Each side says which message it expects next; anything else is refused with a
:class:`~tfyarn.node.messages.MessageError` naming what was wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from typing import TypeVar

from tfyarn.errors import TFYarnError
from tfyarn.node.messages import Message, MessageError

__all__ = ["ControlPipe"]

M = TypeVar("M", bound=Message)

#: A control message is small; anything longer is a bug, not data to buffer forever.
_MAX_LINE = 16 * 1024 * 1024


class ControlPipe:
    """One direction-pair of pipes carrying newline-delimited JSON objects.

    Parameters
    ----------
    read_fd, write_fd : int
        Pipe ends this side reads from and writes to.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = b""

    def send(self, message: Message) -> None:
        """Write one message."""
        data = (json.dumps(message.to_json()) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]

    def receive(self, expected: type[M], timeout: float | None) -> M | None:
        """Read the next message, which must be an ``expected``; None at end of stream.

        Raises
        ------
        TimeoutError
            No whole message within ``timeout`` seconds.
        MessageError
            The line is not JSON, or not a valid ``expected`` message.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if not ready:
                raise TimeoutError(f"no control message within {timeout} s")
            chunk = os.read(self._read_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
            if len(self._buffer) > _MAX_LINE:
                raise TFYarnError("control message too long: the role process is misbehaving")
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            raw = json.loads(line)
        except ValueError:
            raise MessageError(
                f"expected a {expected.kind!r} control message, got a line that is not JSON: "
                f"{line[:200]!r}"
            ) from None
        return expected.from_json(raw)

    def close(self) -> None:
        """Close both ends; idempotent."""
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read_fd = self._write_fd = -1
