"""Frame header: round trips, every refusal, and a hypothesis fuzz of the parser."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfyarn.errors import FrameError
from tfyarn.transport import frames
from tfyarn.transport.frames import Kind, Limits, RmaDesc, TensorDesc


def _frame(kind: Kind, payload: bytes, ext: TensorDesc | RmaDesc | None = None) -> bytes:
    return frames.pack_frame_header(kind, len(payload), ext) + payload


def test_plain_message_round_trip() -> None:
    data = _frame(Kind.MSG, b"hello")
    f = frames.parse_frame(data)
    assert f.header.kind is Kind.MSG
    assert f.ext is None
    assert bytes(f.payload) == b"hello"
    assert len(data) == frames.HEADER_SIZE + 5


def test_tensor_descriptor_round_trip() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    desc = frames.tensor_desc_of(arr)
    assert desc == TensorDesc("<f4", (3, 4))
    f = frames.parse_frame(_frame(Kind.MSG, arr.tobytes(), desc))
    assert f.ext == desc
    np.testing.assert_array_equal(np.frombuffer(f.payload, "<f4").reshape(3, 4), arr)


def test_rma_descriptor_round_trip() -> None:
    desc = RmaDesc("weights/layer-1", 4096, 128)
    f = frames.parse_frame(_frame(Kind.GET, b"", desc))
    assert f.header.kind is Kind.GET and f.ext == desc


def test_tensor_desc_of_ignores_non_arrays() -> None:
    assert frames.tensor_desc_of(b"abc") is None
    assert frames.tensor_desc_of(bytearray(3)) is None
    assert frames.tensor_desc_of(np.array(["a"])) is None  # strings are not tensors


def test_truncated_header() -> None:
    data = _frame(Kind.MSG, b"x")
    for cut in (0, 1, frames.HEADER_SIZE - 1):
        with pytest.raises(FrameError, match="truncated"):
            frames.parse_frame(data[:cut])


def test_truncated_payload_and_trailing_garbage() -> None:
    data = _frame(Kind.MSG, b"abcdef")
    with pytest.raises(FrameError, match="announces"):
        frames.parse_frame(data[:-1])
    with pytest.raises(FrameError, match="announces"):
        frames.parse_frame(data + b"!")


def test_wrong_magic() -> None:
    data = bytearray(_frame(Kind.MSG, b""))
    data[0:4] = b"HTTP"
    with pytest.raises(FrameError, match="magic"):
        frames.parse_frame(data)


def test_wrong_version() -> None:
    data = bytearray(_frame(Kind.MSG, b""))
    data[4] = frames.VERSION + 1
    with pytest.raises(FrameError, match="version"):
        frames.parse_frame(data)


def test_unknown_kind() -> None:
    data = bytearray(_frame(Kind.MSG, b""))
    data[5] = 200
    with pytest.raises(FrameError, match="kind"):
        frames.parse_frame(data)


def test_absurd_length_is_refused_before_any_allocation() -> None:
    data = bytearray(_frame(Kind.MSG, b""))
    struct.pack_into("<Q", data, 8, 2**63)
    with pytest.raises(FrameError, match="exceeds the limit"):
        frames.parse_header(data)
    with pytest.raises(FrameError, match="exceeds the limit"):
        frames.parse_header(_frame(Kind.MSG, b"x" * 11), Limits(max_payload=10))


def test_absurd_extension_length() -> None:
    data = bytearray(_frame(Kind.MSG, b""))
    data[6] = int(frames.ExtType.TENSOR)
    struct.pack_into("<I", data, 16, 2**31)
    with pytest.raises(FrameError, match="extension"):
        frames.parse_header(data)


def test_tensor_shape_must_match_payload() -> None:
    with pytest.raises(FrameError, match="payload"):
        frames.pack_frame_header(Kind.MSG, 10, TensorDesc("<f4", (3,)))
    # A hostile peer may still send one: the parser refuses it too.
    header = frames.pack_frame_header(Kind.MSG, 12, TensorDesc("<f4", (3,)))
    bad = bytearray(header + b"\0" * 12)
    struct.pack_into("<Q", bad, 8, 8)  # announce 8 payload bytes instead of 12
    with pytest.raises(FrameError, match="does not match"):
        frames.parse_frame(bytes(bad[:-4]))


def test_absurd_dimensions_do_not_blow_up() -> None:
    header = bytearray(frames.pack_frame_header(Kind.MSG, 4, TensorDesc("<f4", (1,) * 8)))
    for i in range(8):  # every dimension 2**64 - 1: product is astronomically large
        struct.pack_into("<Q", header, frames.HEADER_SIZE + 1 + 3 + 1 + 8 * i, 2**64 - 1)
    with pytest.raises(FrameError, match="does not match"):
        frames.parse_frame(bytes(header) + b"\0" * 4)


@pytest.mark.parametrize("dtype", ["O", "<U4", "|S3", "<f999", "xyz", "<V8"])
def test_unsupported_dtypes(dtype: str) -> None:
    with pytest.raises(FrameError, match="dtype"):
        frames.pack_frame_header(Kind.MSG, 0, TensorDesc(dtype, (0,)))


def test_check_tensor_matches() -> None:
    desc = TensorDesc("<f4", (2, 2))
    frames.check_tensor_matches(desc, "<f4", (2, 2))
    frames.check_tensor_matches(None, "<f4", (2, 2))
    frames.check_tensor_matches(desc, None, None)
    with pytest.raises(FrameError, match="mismatch"):
        frames.check_tensor_matches(desc, "<f8", (2, 2))
    with pytest.raises(FrameError, match="mismatch"):
        frames.check_tensor_matches(desc, "<f4", (4,))


def test_bad_region_name_length() -> None:
    data = bytearray(_frame(Kind.GET, b"", RmaDesc("r", 0, 1)))
    struct.pack_into("<H", data, frames.HEADER_SIZE + 16, 999)
    with pytest.raises(FrameError, match="region name"):
        frames.parse_frame(data)


# --- fuzz -----------------------------------------------------------------------------

_exts = st.one_of(
    st.none(),
    st.builds(
        RmaDesc,
        st.text(max_size=20),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**20),
    ),
    st.builds(
        lambda dt, shape: TensorDesc(dt, tuple(shape)),
        st.sampled_from(["<f4", "<f8", "|u1", "<i8", "<c16", "|b1"]),
        st.lists(st.integers(0, 5), max_size=4),
    ),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(Kind)), ext=_exts, payload=st.binary(max_size=64))
def test_fuzz_round_trip(kind: Kind, ext: TensorDesc | RmaDesc | None, payload: bytes) -> None:
    if isinstance(ext, TensorDesc):
        payload = b"\x01" * ext.nbytes
    f = frames.parse_frame(_frame(kind, payload, ext))
    assert (f.header.kind, f.ext, bytes(f.payload)) == (kind, ext, payload)


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes_only_raise_frame_error(data: bytes) -> None:
    """Arbitrary input either parses or raises FrameError: nothing else, nothing huge."""
    try:
        f = frames.parse_frame(data, Limits(max_payload=1 << 20))
    except FrameError:
        return
    assert len(f.payload) == f.header.length <= len(data)


@settings(max_examples=1500, deadline=None)
@given(
    ext=_exts,
    flips=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_mutated_valid_frames(
    ext: TensorDesc | RmaDesc | None, flips: list[tuple[int, int]]
) -> None:
    """Corrupt bytes of a valid frame: the parser must stay within FrameError."""
    payload = b"\x02" * (ext.nbytes if isinstance(ext, TensorDesc) else 7)
    data = bytearray(_frame(Kind.MSG, payload, ext))
    for pos, val in flips:
        data[pos % len(data)] = val
    try:
        f = frames.parse_frame(data)
    except FrameError:
        return
    assert len(f.payload) == f.header.length
