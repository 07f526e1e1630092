"""The checkpoint payload format: exact round trips, an allow-list on the way back, no pickles."""

from __future__ import annotations

import json
import math
import pathlib
import pickle
import struct
from typing import Any

import numpy as np
from optuna.samplers._lazy_random_state import LazyRandomState
import pytest

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsafeCheckpointError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


# -- helpers ---------------------------------------------------------------------------------


class _TouchOnUnpickle:
    """Pickles to a stream that creates ``path`` when it is loaded (and nothing else).

    The pickle refers only to ``pathlib``, not to this module, so any process can load it.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def malicious_pickle(marker: pathlib.Path) -> bytes:
    return pickle.dumps(_TouchOnUnpickle(marker))


def hand_written_payload(state_tree: Any, blobs: list[bytes]) -> bytes:
    """Build a payload byte by byte, following the documented layout, not via ``encode``."""
    offsets, position = [], 0
    for blob in blobs:
        offsets.append([position, len(blob)])
        position += len(blob)
    header = json.dumps({"state": state_tree, "blobs": offsets}).encode()
    prefix = b"OCKP" + bytes([1]) + struct.pack("<I", len(header))
    return prefix + header + b"".join(blobs)


def malicious_payload(marker: pathlib.Path) -> bytes:
    """A well-formed checkpoint whose RNG entry points to a pickle that touches ``marker``."""
    return hand_written_payload({"rng": {"$pickle": 0}}, [malicious_pickle(marker)])


def assert_identical(expected: Any, actual: Any, path: str = "state") -> None:
    """Same types, same structure, floats and arrays equal bit for bit."""
    if isinstance(expected, (float, np.floating)):
        assert type(actual) is float, f"{path}: {type(actual)}"
        if math.isnan(expected):
            assert math.isnan(actual), path
        else:
            assert struct.pack("<d", expected) == struct.pack("<d", actual), path
        return
    if isinstance(expected, (int, np.integer)) and not isinstance(expected, bool):
        assert type(actual) is int and actual == int(expected), path
        return
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), path
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, path
        assert actual.tobytes() == np.ascontiguousarray(expected).tobytes(), path
        assert actual.flags.writeable, f"{path}: decoded arrays must be writable copies"
        return
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), path
        for key in expected:
            assert_identical(expected[key], actual[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(e, a, f"{path}[{i}]")
    else:
        assert actual == expected, path


def advanced_rng_state() -> dict[str, Any]:
    lazy = LazyRandomState(2024)
    lazy.rng.random_sample(7)
    lazy.rng.standard_normal()  # leaves a cached Gaussian behind
    return rng_state_dict(lazy)


# -- round trips -----------------------------------------------------------------------------


def test_rng_state_round_trips_bit_for_bit_with_uint32_key() -> None:
    state = {"rng": advanced_rng_state()}
    assert state["rng"]["key"].dtype == np.uint32
    assert state["rng"]["has_gauss"] == 1  # the cached Gaussian is really part of the state

    decoded = _codec.decode(_codec.encode(state))

    assert_identical(state, decoded)


def test_decoded_rng_state_continues_the_same_random_stream() -> None:
    original = LazyRandomState(7)
    original.rng.random_sample(11)
    original.rng.standard_normal()
    decoded = _codec.decode(_codec.encode({"rng": rng_state_dict(original)}))

    restored = LazyRandomState(12345)
    load_rng_state_dict(restored, decoded["rng"])

    expected = [original.rng.standard_normal() for _ in range(3)] + list(original.rng.rand(5))
    actual = [restored.rng.standard_normal() for _ in range(3)] + list(restored.rng.rand(5))
    assert [x.hex() for x in map(float, actual)] == [x.hex() for x in map(float, expected)]


def test_floats_round_trip_bit_for_bit_including_signed_zero_extremes_and_nan() -> None:
    floats = [
        0.1,
        -0.0,
        0.0,
        5e-324,  # smallest subnormal
        2.2250738585072014e-308,
        1.7976931348623157e308,
        math.inf,
        -math.inf,
        1 / 3,
        np.float64(2.5) / 3,
    ]
    state = {"floats": floats, "nan": math.nan, "neg_zero": -0.0}

    decoded = _codec.decode(_codec.encode(state))

    assert_identical(state, decoded)
    assert math.copysign(1.0, decoded["neg_zero"]) == -1.0
    assert math.copysign(1.0, decoded["floats"][1]) == -1.0


def test_tuples_lists_nested_dicts_and_scalars_keep_their_types() -> None:
    state = {
        "tuple": (1, "a", (2.5, None), [True, False]),
        "list": [1, (2,), [], (), {}],
        "nested": {"a": {"b": {"c": [None, "x", -(2**62), 2**64 - 1]}}},
        "bool": True,
        "none": None,
        "str": "ünïcode ✓",
        "numpy_int": np.int64(-3),
    }

    decoded = _codec.decode(_codec.encode(state))

    assert_identical(state, decoded)
    assert isinstance(decoded["tuple"], tuple)
    assert isinstance(decoded["tuple"][2], tuple)
    assert isinstance(decoded["tuple"][3], list)
    assert decoded["bool"] is True


@pytest.mark.parametrize(
    "array",
    [
        np.array([True, False, True]),
        np.arange(256, dtype=np.uint8),
        np.array([0, 2**32 - 1, 12345], dtype=np.uint32),
        np.array([0, 2**64 - 1], dtype=np.uint64),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        np.array([[-(2**63), 2**63 - 1], [0, 1]], dtype=np.int64),
        np.array([-0.0, np.nan, -np.inf, 5e-324]),
        np.frombuffer(struct.pack("<Q", 0x7FF0000000000ABC), dtype=np.float64),  # NaN payload
        np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2, 1:],  # non-contiguous view
        np.zeros((0, 3)),
        np.array(2.5),  # 0-d
    ],
    ids=lambda a: f"{a.dtype}-{a.shape}",
)
def test_arrays_of_allowed_dtypes_round_trip_bit_for_bit(array: np.ndarray) -> None:
    decoded = _codec.decode(_codec.encode({"a": array, "after": (array, 1)}))

    assert_identical({"a": array, "after": (array, 1)}, decoded)


def test_encoding_is_deterministic() -> None:
    state = {"rng": advanced_rng_state(), "x": (0.1, [1, 2])}
    assert _codec.encode(state) == _codec.encode(state)


def test_dict_keys_that_look_like_format_tags_round_trip_or_are_refused() -> None:
    # A Stateful sampler may use any string keys (the protocol allows string-keyed dicts).
    state = {"user": {"$tuple": [1, 2]}, "other": {"$float": "0x1p+0"}}
    try:
        payload = _codec.encode(state)
    except (TypeError, ValueError):
        return  # refusing such keys at encode time would be fine too
    assert _codec.decode(payload) == state


# -- allow-list ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.array([1.0, 2.0], dtype=np.float32),
        np.array([1 + 2j]),
        np.array(["text"]),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
    ids=lambda a: str(a.dtype),
)
def test_encode_refuses_arrays_outside_the_dtype_allow_list(array: np.ndarray) -> None:
    with pytest.raises(TypeError, match="dtype"):
        _codec.encode({"a": array})


@pytest.mark.parametrize("dtype", ["|O", "<f4", "<c16", "|V8", "<U4", ">u4"])
def test_decode_refuses_arrays_outside_the_dtype_allow_list(dtype: str) -> None:
    payload = hand_written_payload({"a": {"$array": 0, "dtype": dtype, "shape": [1]}}, [b"\0" * 8])
    with pytest.raises(CorruptCheckpointError, match="dtype"):
        _codec.decode(payload)


def test_decode_refuses_an_unknown_dtype_name() -> None:
    payload = hand_written_payload({"a": {"$array": 0, "dtype": "nodtype", "shape": [1]}}, [b"x"])
    with pytest.raises(CorruptCheckpointError):
        _codec.decode(payload)


def test_object_array_holding_a_pickle_is_refused_and_never_loaded(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "MARKER"
    blob = malicious_pickle(marker)
    payload = hand_written_payload({"a": {"$array": 0, "dtype": "|O", "shape": [1]}}, [blob])

    for allow_pickle in (False, True):
        with pytest.raises(CorruptCheckpointError):
            _codec.decode(payload, allow_pickle=allow_pickle)
    assert not marker.exists()


def test_encode_refuses_values_the_format_cannot_represent() -> None:
    with pytest.raises(TypeError):
        _codec.encode({"s": {1, 2}})
    with pytest.raises(TypeError, match="keys must be strings"):
        _codec.encode({"d": {1: "a"}})


# -- corruption ------------------------------------------------------------------------------


def test_truncated_payloads_raise_corrupt_checkpoint_error() -> None:
    payload = _codec.encode({"rng": advanced_rng_state(), "t": (1.5, "x")})
    for length in range(len(payload)):
        with pytest.raises(CorruptCheckpointError):
            _codec.decode(payload[:length])


def test_payload_with_extra_bytes_is_corrupt() -> None:
    payload = _codec.encode({"rng": advanced_rng_state()})
    with pytest.raises(CorruptCheckpointError, match="wrong length"):
        _codec.decode(payload + b"\0")


def test_wrong_magic_or_version_is_corrupt_and_names_the_problem() -> None:
    payload = _codec.encode({"x": 1})
    with pytest.raises(CorruptCheckpointError, match="magic"):
        _codec.decode(b"XCKP" + payload[4:])
    newer = _codec.FORMAT_VERSION + 1
    with pytest.raises(CorruptCheckpointError, match=f"version {newer} .*upgrade"):
        _codec.decode(payload[:4] + bytes([newer]) + payload[5:])


def test_array_shape_that_does_not_fit_its_blob_is_corrupt() -> None:
    payload = hand_written_payload({"a": {"$array": 0, "dtype": "<u4", "shape": [3]}}, [b"\0" * 8])
    with pytest.raises(CorruptCheckpointError):
        _codec.decode(payload)


def test_decode_of_any_single_bit_flip_raises_only_corrupt_checkpoint_error() -> None:
    payload = _codec.encode({"a": np.array([[1.0, -0.0]]), "b": np.array([True, False])})
    unexpected = []
    for i in range(len(payload)):
        for bit in range(8):
            flipped = bytearray(payload)
            flipped[i] ^= 1 << bit
            try:
                _codec.decode(bytes(flipped))
            except CorruptCheckpointError:
                pass
            except Exception as e:  # collecting whatever escapes
                unexpected.append((i, bit, repr(e)))
    assert unexpected == []


def test_deeply_nested_header_is_corrupt_not_a_recursion_error() -> None:
    header = b'{"state":{"a":' + b"[" * 5000 + b"]" * 5000 + b'},"blobs":[]}'
    payload = b"OCKP\x01" + struct.pack("<I", len(header)) + header
    with pytest.raises(CorruptCheckpointError):
        _codec.decode(payload)


def test_pickled_value_is_refused_on_encode_without_allow_pickle() -> None:
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        _codec.encode({"x": _codec.PickledValue({"a": 1})})


def test_pickled_value_is_refused_on_decode_without_allow_pickle() -> None:
    payload = _codec.encode({"x": _codec.PickledValue({"a": (1, 2.5)})}, allow_pickle=True)

    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        _codec.decode(payload)
    assert _codec.decode(payload, allow_pickle=True) == {"x": {"a": (1, 2.5)}}


def test_malicious_pickle_is_live_so_the_refusal_tests_below_mean_something(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "MARKER"
    pickle.loads(malicious_pickle(marker))
    assert marker.exists()

    marker.unlink()
    _codec.decode(malicious_payload(marker), allow_pickle=True)
    assert marker.exists()


def test_hand_written_malicious_pickle_payload_is_refused_and_not_executed(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "MARKER"

    with pytest.raises(UnsafeCheckpointError):
        _codec.decode(malicious_payload(marker))

    assert not marker.exists()


def test_malicious_pickle_nested_deep_in_the_tree_is_refused_and_not_executed(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "MARKER"
    tree = {"a": [1, {"$tuple": [{"b": {"$pickle": 0}}]}]}
    payload = hand_written_payload(tree, [malicious_pickle(marker)])

    with pytest.raises(UnsafeCheckpointError):
        _codec.decode(payload)

    assert not marker.exists()


def test_raw_pickle_as_payload_is_corrupt_and_not_executed(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "MARKER"

    for allow_pickle in (False, True):
        with pytest.raises(CorruptCheckpointError):
            _codec.decode(malicious_pickle(marker), allow_pickle=allow_pickle)

    assert not marker.exists()


def test_a_payload_tells_whether_it_holds_pickles_without_unpickling_them() -> None:
    payload = _codec.encode({"obj": _codec.PickledValue(object())}, allow_pickle=True)
    info = _codec.inspect_payload(payload)  # no allow_pickle needed: nothing is unpickled
    assert info == _codec.PayloadInfo(_codec.FORMAT_VERSION, pickled=True)
    assert not _codec.inspect_payload(_codec.encode({"x": 1.5})).pickled


def test_bytes_round_trip_as_blobs() -> None:
    state = {"raw": b"\x00\xffOCKP", "nested": [bytearray(b"ab"), (b"",)]}
    decoded = _codec.decode(_codec.encode(state))
    assert decoded == {"raw": b"\x00\xffOCKP", "nested": [b"ab", (b"",)]}
    assert type(decoded["nested"][0]) is bytes
