"""Encode a sampler state dict to bytes and back, without executing anything on the way back.

A payload is ``MAGIC | format version (1 byte) | header length (4 bytes, little endian) | header |
blobs``. The header is UTF-8 JSON describing the state tree; bytes, numpy arrays and (only when
the user opted in) cloudpickled objects are stored as raw blobs that the header points to.
Decoding accepts an allow-list of array dtypes and refuses pickles unless told otherwise, so a
tampered row cannot run code. Floats are stored as ``float.hex`` strings so they round-trip bit
for bit. Bytes (``$bytes``) came with trial states; earlier releases never read those.

The format version is 1, unchanged since release 0.1. A release that changes the format will
read every earlier version and write the newest; a payload of a newer version than a release
knows is refused with an error that says to upgrade.

Integrity is checked by the checkpoint's seal (see :mod:`optuna_checkpoint.state._seal`), which
covers the payload and the place it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import struct
from typing import Any

import numpy as np

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsafeCheckpointError


FORMAT_VERSION = 1
_READABLE_VERSIONS = frozenset({1})
MAGIC = b"OCKP"
_PREFIX = struct.Struct("<4sBI")

# Only plain numeric dtypes come back from a payload; object arrays would unpickle.
_ALLOWED_DTYPES = frozenset(
    np.dtype(name).str
    for name in ("bool", "uint8", "uint32", "uint64", "int32", "int64", "float64")
)

_FLOAT = "$float"
_ARRAY = "$array"
_PICKLE = "$pickle"
_TUPLE = "$tuple"
_BYTES = "$bytes"


class PickledValue:
    """Marks a value that adapters may only store by pickling it (requires the user's opt-in)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass(frozen=True)
class PayloadInfo:
    """What a payload says about itself, besides the state.

    Attributes:
        format_version: The payload format version.
        pickled: Whether the payload holds pickled objects.
    """

    format_version: int
    pickled: bool = False


def encode(state: dict[str, Any], *, allow_pickle: bool = False) -> bytes:
    """Encode a state dict of plain values, tuples, bytes, numpy arrays and :class:`PickledValue`.

    Args:
        state: The state dict returned by a state adapter.
        allow_pickle: Whether :class:`PickledValue` leaves may be cloudpickled.

    Returns:
        The payload bytes.

    Raises:
        UnsafeCheckpointError: A :class:`PickledValue` was found and ``allow_pickle`` is false.
        TypeError: The state contains a value the format cannot represent.
    """
    blobs: list[bytes] = []

    def to_tree(value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return {_FLOAT: float(value).hex()}
        if isinstance(value, np.ndarray):
            # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
            array = value if value.flags.c_contiguous else value.copy(order="C")
            if array.dtype.str not in _ALLOWED_DTYPES:
                raise TypeError(f"arrays of dtype {array.dtype} cannot be checkpointed")
            blobs.append(array.tobytes())
            return {_ARRAY: len(blobs) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
        if isinstance(value, (bytes, bytearray)):
            blobs.append(bytes(value))
            return {_BYTES: len(blobs) - 1}
        if isinstance(value, tuple):
            return {_TUPLE: [to_tree(v) for v in value]}
        if isinstance(value, list):
            return [to_tree(v) for v in value]
        if isinstance(value, dict):
            if not all(isinstance(k, str) and not k.startswith("$") for k in value):
                raise TypeError("state dict keys must be strings not starting with '$'")
            return {k: to_tree(v) for k, v in value.items()}
        if isinstance(value, PickledValue):
            if not allow_pickle:
                raise UnsafeCheckpointError(
                    "The sampler state contains an object that can only be stored by pickling; "
                    "pass allow_pickle=True to CheckpointingSampler if you trust every process "
                    "that writes to this database."
                )
            import cloudpickle

            blobs.append(cloudpickle.dumps(value.value))
            return {_PICKLE: len(blobs) - 1}
        raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")

    tree = to_tree(state)
    offsets = []
    position = 0
    for blob in blobs:
        offsets.append([position, len(blob)])
        position += len(blob)
    header = json.dumps({"state": tree, "blobs": offsets}, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(blobs)


def decode(payload: bytes, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Decode a payload made by :func:`encode`; the inverse of it, bit for bit.

    Args:
        payload: The bytes to decode. Check the checkpoint's seal first.
        allow_pickle: Whether pickled leaves may be unpickled (this executes code from the
            payload, so only do it for a database whose writers you trust).

    Returns:
        The state dict.

    Raises:
        CorruptCheckpointError: The payload is not a well-formed checkpoint of a known version.
        UnsafeCheckpointError: The payload holds a pickle and ``allow_pickle`` is false.
    """
    return _decode(payload, allow_pickle=allow_pickle, state_wanted=True)[0]


def inspect_payload(payload: bytes) -> PayloadInfo:
    """Read what a payload says about itself, without decoding (or unpickling) its state.

    Raises:
        CorruptCheckpointError: The payload is not a well-formed checkpoint of a known version.
    """
    return _decode(payload, allow_pickle=False, state_wanted=False)[1]


def _decode(
    payload: bytes, *, allow_pickle: bool, state_wanted: bool
) -> tuple[dict[str, Any], PayloadInfo]:
    try:
        magic, version, header_length = _PREFIX.unpack_from(payload)
    except struct.error as e:
        raise CorruptCheckpointError("checkpoint payload is truncated") from e
    if magic != MAGIC:
        raise CorruptCheckpointError("checkpoint payload does not start with the expected magic")
    if version not in _READABLE_VERSIONS:
        raise CorruptCheckpointError(
            f"checkpoint format version {version} is not supported by this release "
            f"(it reads versions up to {FORMAT_VERSION}); upgrade optuna-checkpoint"
        )
    start = _PREFIX.size
    try:
        header = json.loads(payload[start : start + header_length])
        # Views, not copies: an array is copied once, into the memory it will own.
        blob_area = memoryview(payload)[start + header_length :]
        blobs = [blob_area[offset : offset + size] for offset, size in header["blobs"]]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CorruptCheckpointError("checkpoint header is not valid") from e
    if sum(len(b) for b in blobs) != len(blob_area):
        raise CorruptCheckpointError("checkpoint blob area has the wrong length")
    pickled = False

    def from_tree(node: Any) -> Any:
        if isinstance(node, list):
            return [from_tree(v) for v in node]
        if not isinstance(node, dict):
            return node
        if _FLOAT in node:
            return float.fromhex(node[_FLOAT])
        if _TUPLE in node:
            return tuple(from_tree(v) for v in node[_TUPLE])
        if _BYTES in node:
            return bytes(blobs[node[_BYTES]])
        if _ARRAY in node:
            # Checked as text first: np.dtype() parses its argument, which is untrusted here.
            if node["dtype"] not in _ALLOWED_DTYPES:
                raise CorruptCheckpointError(
                    f"checkpoint holds an array of dtype {node['dtype']!r}"
                )
            dtype = np.dtype(node["dtype"])
            array = np.frombuffer(blobs[node[_ARRAY]], dtype=dtype)
            return array.reshape(node["shape"]).copy()
        if _PICKLE in node:
            nonlocal pickled
            pickled = True
            if not state_wanted:
                return None
            if not allow_pickle:
                raise UnsafeCheckpointError(
                    "This checkpoint holds a pickled object and loading it would execute code "
                    "from the database. If you trust every process that writes to this database, "
                    "pass allow_pickle=True to CheckpointingSampler."
                )
            import cloudpickle

            return cloudpickle.loads(blobs[node[_PICKLE]])
        return {k: from_tree(v) for k, v in node.items()}

    try:
        state = from_tree(header["state"])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
        raise CorruptCheckpointError("checkpoint state tree is not valid") from e
    if not isinstance(state, dict):
        raise CorruptCheckpointError("checkpoint state is not a dict")
    return state, PayloadInfo(version, pickled)
