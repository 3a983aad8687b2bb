"""The frame header of the tcp and grpc transports: pure pack and parse functions.

Every message on a tcp connection (and every message on a grpc stream) is preceded by a
fixed header, then an optional *extension* (a tensor descriptor or an RMA descriptor),
then ``length`` payload bytes, then the frame's 16-byte tag
(:mod:`tfyarn.transport.integrity`)::

    offset size field
    0      4    magic      b"TFYF"
    4      1    version    2 (1 had no tags)
    5      1    kind       Kind (MSG, PUT, PUT_ACK, GET, GET_REPLY, ERROR, HELLO)
    6      1    ext_type   ExtType (NONE, TENSOR, RMA)
    7      1    reserved   0
    8      8    length     payload bytes that follow the extension (little endian)
    16     4    ext_len    bytes of extension that follow the header
    20     4    reserved   0

Tensor extension: ``dtype_len`` (u8), dtype string (NumPy ``dtype.str``, e.g. ``"<f4"``,
or the name of an extension float type such as ``"bfloat16"``),
``ndim`` (u8), then ``ndim`` u64 dimensions. RMA extension: ``offset`` (u64), ``nbytes``
(u64), ``name_len`` (u16), region name (UTF-8).

Parsing never trusts the peer: every field is checked against :class:`Limits` before
anything is allocated, so a hostile or broken peer gets a :class:`~tfyarn.errors.FrameError`
for its own connection, never a crash or an unbounded allocation.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tfyarn.errors import FrameError
from tfyarn.transport.base import Buffer

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "ExtType",
    "Frame",
    "Header",
    "Kind",
    "Limits",
    "RmaDesc",
    "TensorDesc",
    "check_tensor_matches",
    "pack_frame_header",
    "parse_extension",
    "parse_frame",
    "parse_header",
    "tensor_desc_of",
]

MAGIC = b"TFYF"
VERSION = 2
_HEADER = struct.Struct("<4sBBBxQI4x")
HEADER_SIZE = _HEADER.size  # 24
_U8 = struct.Struct("<B")
_U64 = struct.Struct("<Q")
_RMA_FIXED = struct.Struct("<QQH")


class Kind(enum.IntEnum):
    """What a frame is for."""

    #: One message of the ordered data stream (``send``/``recv_into``).
    MSG = 1
    #: One-sided write request: payload goes into the peer's region.
    PUT = 2
    #: The region now holds the data of the matching PUT.
    PUT_ACK = 3
    #: One-sided read request (no payload).
    GET = 4
    #: Answer to GET: the region's bytes.
    GET_REPLY = 5
    #: The peer could not serve a request; payload is a UTF-8 message.
    ERROR = 6
    #: First frame after authentication; payload names the channel (``b"data"``/``b"rma"``).
    HELLO = 7


class ExtType(enum.IntEnum):
    """Which extension follows the header."""

    NONE = 0
    TENSOR = 1
    RMA = 2


@dataclass(frozen=True)
class Limits:
    """Bounds a received frame must respect; anything beyond is a :class:`FrameError`.

    Parameters
    ----------
    max_payload : int
        Largest payload accepted, in bytes. ``recv_into`` needs no tighter bound: the
        caller's buffer is the bound.
    max_alloc : int
        Largest message ``recv()`` allocates a buffer for; a larger one is discarded with
        a FrameError (receive it with ``recv_into`` into a buffer of your own, or raise
        this limit), so that a peer cannot make us allocate more than we chose to.
    max_ext : int
        Largest extension accepted, in bytes.
    max_ndim : int
        Most dimensions a tensor descriptor may have.
    max_name : int
        Longest region name, in bytes.
    """

    max_payload: int = 1 << 36  # 64 GiB: beyond any single tensor a role exchanges
    max_alloc: int = 1 << 31  # 2 GiB
    max_ext: int = 4096
    max_ndim: int = 32
    max_name: int = 256

    def __post_init__(self) -> None:
        for field in ("max_payload", "max_alloc", "max_ext", "max_ndim", "max_name"):
            if getattr(self, field) < 0:
                raise ValueError(f"Limits.{field} must be >= 0, got {getattr(self, field)}")


DEFAULT_LIMITS = Limits()
# Plain dict lookups: calling an Enum class is slow, and this runs once per message.
_KIND_OF = {int(k): k for k in Kind}
_EXT_OF = {int(e): e for e in ExtType}


@dataclass(frozen=True)
class TensorDesc:
    """dtype and shape of a message's payload, when it was sent from an array."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes the payload must have for this dtype and shape."""
        return _itemsize(self.dtype) * math.prod(self.shape)


@dataclass(frozen=True)
class RmaDesc:
    """Target of a PUT/GET: ``nbytes`` at byte ``offset`` of region ``name``."""

    name: str
    offset: int
    nbytes: int


class Header(NamedTuple):
    """The fixed part of a frame, as parsed (a tuple: parsed once per message)."""

    kind: Kind
    ext_type: ExtType
    length: int
    ext_len: int


@dataclass(frozen=True)
class Frame:
    """A whole frame parsed from one contiguous buffer (see :func:`parse_frame`)."""

    header: Header
    ext: TensorDesc | RmaDesc | None
    payload: memoryview


# Fixed-size NumPy kinds a tensor may have; anything else (objects, strings) is refused
# because its bytes do not mean the same thing in another process.
_KINDS = frozenset("biufc")
_MAX_ITEMSIZE = 32


#: Extension dtypes (ml_dtypes, as TensorFlow uses them) named by ``dtype.name``: their
#: ``dtype.str`` is an ambiguous ``'<V2'``.
_NAMED_DTYPES = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _dtype_token(dtype: object) -> str | None:
    """What a descriptor records for a NumPy dtype: ``dtype.str``, or the name of an
    extension float type; None for anything that is not a plain number type."""
    text = getattr(dtype, "str", None)
    if isinstance(text, str) and text[1:2] in _KINDS:
        return text
    name = getattr(dtype, "name", None)
    return name if name in _NAMED_DTYPES else None


def _itemsize(dtype: str) -> int:
    """Item size of a descriptor dtype (``'<f4'`` or ``'bfloat16'``); FrameError otherwise."""
    if dtype in _NAMED_DTYPES:
        return _NAMED_DTYPES[dtype]
    if len(dtype) < 3 or dtype[0] not in "<>|=" or dtype[1] not in _KINDS:
        raise FrameError(f"unsupported tensor dtype {dtype!r} (expected e.g. '<f4', '|u1')")
    digits = dtype[2:]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 2:
        raise FrameError(f"unsupported tensor dtype {dtype!r}")
    size = int(digits)
    if not 1 <= size <= _MAX_ITEMSIZE:
        raise FrameError(f"unsupported tensor dtype {dtype!r}: item size {size}")
    return size


def tensor_desc_of(obj: object) -> TensorDesc | None:
    """Return the descriptor of a NumPy-like array (``dtype.str`` and ``shape``), else None.

    Duck-typed so that the transport does not import NumPy: anything with ``.dtype.str``
    and ``.shape`` (NumPy arrays, pool buffers viewed as arrays) gets a descriptor.
    """
    dtype = getattr(obj, "dtype", None)
    if dtype is None:  # bytes, bytearray, memoryview: the common case, kept cheap
        return None
    token = _dtype_token(dtype)
    shape = getattr(obj, "shape", None)
    if token is None or not isinstance(shape, tuple):
        return None
    return TensorDesc(token, tuple(int(d) for d in shape))


def _pack_ext(ext: TensorDesc | RmaDesc | None) -> tuple[ExtType, bytes]:
    if ext is None:
        return ExtType.NONE, b""
    if isinstance(ext, TensorDesc):
        _itemsize(ext.dtype)
        dt = ext.dtype.encode("ascii")
        if len(ext.shape) > 255:
            raise FrameError(f"tensor has {len(ext.shape)} dimensions; at most 255 fit a frame")
        parts = [_U8.pack(len(dt)), dt, _U8.pack(len(ext.shape))]
        parts.extend(_U64.pack(d) for d in ext.shape)
        return ExtType.TENSOR, b"".join(parts)
    name = ext.name.encode("utf-8")
    if len(name) > 0xFFFF:
        raise FrameError(f"region name is {len(name)} bytes; at most 65535 fit a frame")
    return ExtType.RMA, _RMA_FIXED.pack(ext.offset, ext.nbytes, len(name)) + name


def pack_frame_header(kind: Kind, length: int, ext: TensorDesc | RmaDesc | None = None) -> bytes:
    """Return the header and extension that precede ``length`` payload bytes.

    Parameters
    ----------
    kind : Kind
        What the frame is for.
    length : int
        Number of payload bytes that will follow.
    ext : TensorDesc or RmaDesc or None
        Optional descriptor of the payload (tensor) or of the request (RMA).

    Returns
    -------
    bytes
        ``HEADER_SIZE + ext_len`` bytes to send before the payload.
    """
    if ext is None and length >= 0:
        return _HEADER.pack(MAGIC, VERSION, kind, 0, length, 0)
    if length < 0:
        raise FrameError(f"frame length must be >= 0, got {length}")
    if isinstance(ext, TensorDesc) and ext.nbytes != length:
        raise FrameError(
            f"tensor {ext.dtype}{list(ext.shape)} has {ext.nbytes} bytes, payload has {length}"
        )
    ext_type, ext_bytes = _pack_ext(ext)
    return _HEADER.pack(MAGIC, VERSION, int(kind), int(ext_type), length, len(ext_bytes)) + (
        ext_bytes
    )


def parse_header(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Parse and check the fixed :data:`HEADER_SIZE` bytes at the start of ``data``.

    Raises
    ------
    FrameError
        Truncated header, wrong magic or version, unknown kind or extension type, or a
        length/extension size beyond ``limits``.
    """
    view = memoryview(data)
    if view.nbytes < HEADER_SIZE:
        raise FrameError(f"truncated frame header: {view.nbytes} of {HEADER_SIZE} bytes")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    magic, version, kind, ext_type, length, ext_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise FrameError(
            f"bad frame magic {bytes(magic)!r} (expected {MAGIC!r}): not a tfyarn peer"
        )
    if version != VERSION:
        raise FrameError(
            f"frame version {version} not supported (this tfyarn speaks {VERSION}); "
            "run the same tfyarn version on every node"
        )
    kind_e = _KIND_OF.get(kind)
    ext_e = _EXT_OF.get(ext_type)
    if kind_e is None or ext_e is None:
        raise FrameError(f"unknown frame kind {kind} or extension type {ext_type}")
    if length > limits.max_payload:
        raise FrameError(f"frame payload of {length} bytes exceeds the limit {limits.max_payload}")
    if ext_len > limits.max_ext:
        raise FrameError(f"frame extension of {ext_len} bytes exceeds the limit {limits.max_ext}")
    if (ext_e is ExtType.NONE) != (ext_len == 0):
        raise FrameError(f"extension type {ext_e.name} with {ext_len} extension bytes")
    return Header(kind_e, ext_e, length, ext_len)


def parse_extension(
    header: Header, data: Buffer, limits: Limits = DEFAULT_LIMITS
) -> TensorDesc | RmaDesc | None:
    """Parse the ``header.ext_len`` extension bytes that follow ``header``.

    Raises
    ------
    FrameError
        Truncated or inconsistent extension, unsupported dtype, too many dimensions, a
        tensor whose size does not match the payload length, or an invalid region name.
    """
    if header.ext_type is ExtType.NONE and header.ext_len == 0:
        return None
    view = memoryview(data).cast("B")
    if view.nbytes != header.ext_len:
        raise FrameError(f"extension has {view.nbytes} bytes, header says {header.ext_len}")
    if header.ext_type is ExtType.NONE:
        return None
    if header.ext_type is ExtType.TENSOR:
        return _parse_tensor(header, view, limits)
    return _parse_rma(view, limits)


def _parse_tensor(header: Header, view: memoryview, limits: Limits) -> TensorDesc:
    if view.nbytes < 1:
        raise FrameError("truncated tensor descriptor")
    dt_len = view[0]
    pos = 1 + dt_len
    if view.nbytes < pos + 1:
        raise FrameError("truncated tensor descriptor (dtype)")
    try:
        dtype = bytes(view[1:pos]).decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("tensor dtype is not ASCII") from None
    itemsize = _itemsize(dtype)
    ndim = view[pos]
    pos += 1
    if ndim > limits.max_ndim:
        raise FrameError(f"tensor has {ndim} dimensions; the limit is {limits.max_ndim}")
    if view.nbytes != pos + 8 * ndim:
        raise FrameError(
            f"tensor descriptor is {view.nbytes} bytes, {pos + 8 * ndim} expected for {ndim} dims"
        )
    shape = tuple(_U64.unpack_from(view, pos + 8 * i)[0] for i in range(ndim))
    # Multiply with an early exit so that absurd dimensions never build huge integers.
    total = 0 if 0 in shape else itemsize
    for d in shape:
        total *= d
        if total > header.length:
            break
    if total != header.length:
        raise FrameError(
            f"tensor {dtype}{list(shape)} does not match the payload of {header.length} bytes"
        )
    return TensorDesc(dtype, shape)


def _parse_rma(view: memoryview, limits: Limits) -> RmaDesc:
    if view.nbytes < _RMA_FIXED.size:
        raise FrameError("truncated RMA descriptor")
    offset, nbytes, name_len = _RMA_FIXED.unpack_from(view)
    if name_len > limits.max_name or view.nbytes != _RMA_FIXED.size + name_len:
        raise FrameError(f"bad region name length {name_len} (limit {limits.max_name})")
    if nbytes > limits.max_payload:
        raise FrameError(f"RMA request of {nbytes} bytes exceeds the limit {limits.max_payload}")
    try:
        name = bytes(view[_RMA_FIXED.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("region name is not UTF-8") from None
    return RmaDesc(name, offset, nbytes)


def parse_frame(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Parse one complete frame (header, extension and payload) held in one buffer.

    The payload is returned as a view into ``data`` (no copy).

    Raises
    ------
    FrameError
        Anything :func:`parse_header`/:func:`parse_extension` refuse, or a buffer whose
        size is not exactly the frame's size (truncated frame or trailing garbage).
    """
    view = memoryview(data).cast("B")
    header = parse_header(view, limits)
    end_ext = HEADER_SIZE + header.ext_len
    if view.nbytes < end_ext:
        raise FrameError(f"truncated frame: {view.nbytes} bytes, extension ends at {end_ext}")
    ext = parse_extension(header, view[HEADER_SIZE:end_ext], limits)
    if view.nbytes != end_ext + header.length:
        raise FrameError(
            f"frame is {view.nbytes} bytes, header announces {end_ext + header.length}"
        )
    return Frame(header, ext, view[end_ext:])


def check_tensor_matches(
    desc: TensorDesc | None, dtype: str | None, shape: Sequence[int] | None
) -> None:
    """Check a received tensor descriptor against the destination array's dtype and shape.

    Either side may be absent (raw bytes sent, or received into a plain buffer): then
    only the byte count matters and nothing is checked here.

    Raises
    ------
    FrameError
        dtype or shape differ.
    """
    if desc is None or dtype is None or shape is None:
        return
    if desc.dtype != dtype or tuple(desc.shape) != tuple(shape):
        raise FrameError(
            f"peer sent a tensor {desc.dtype}{list(desc.shape)} into an array "
            f"{dtype}{list(shape)}: dtype/shape mismatch"
        )
