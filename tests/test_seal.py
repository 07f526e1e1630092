"""Seals: what they bind, the key rules, and the seals written by earlier releases."""

from __future__ import annotations

from dataclasses import replace
import hashlib

import pytest

from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import SignatureError
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.stores._base import Checkpoint


KEY = b"k" * 32
WHERE = place("uid", "main", 7, 3)


def checkpoint(payload: bytes = b"OCKP\x02payload bytes") -> Checkpoint:
    return Checkpoint(
        trial_id=7,
        logical_number=3,
        trial_state="COMPLETE",
        trial_values=[0.1, -2.5],
        adapter="TPESampler",
        payload=payload,
        checksum="",
        versions={"optuna": "5.0.0", "python": "3.11.7"},
    )


def sealed(sealer: Sealer, unsealed: Checkpoint | None = None) -> Checkpoint:
    unsealed = checkpoint() if unsealed is None else unsealed
    return replace(unsealed, checksum=sealer.seal(unsealed, WHERE))


@pytest.mark.parametrize("key", [None, KEY])
def test_a_seal_checks_out_where_it_was_made_and_nowhere_else(key: bytes | None) -> None:
    sealer = Sealer(key)
    good = sealed(sealer)
    sealer.check(good, WHERE)
    altered = [
        replace(good, payload=good.payload + b"\0"),
        replace(good, adapter="RandomSampler"),
        replace(good, trial_state="FAIL"),
        replace(good, trial_values=[0.1, -2.4999999999999996]),  # one ulp away
        replace(good, trial_values=None),
        replace(good, versions={"optuna": "4.9.0", "python": "3.11.7"}),
        replace(good, versions=None),
    ]
    for each in altered:
        with pytest.raises(CorruptCheckpointError):
            sealer.check(each, WHERE)
    for elsewhere in (place("uid", "main", 8, 3), place("uid", "worker-1", 7, 3)):
        with pytest.raises(CorruptCheckpointError):
            sealer.check(good, elsewhere)


def test_every_single_bit_flip_and_truncation_of_the_payload_changes_the_seal() -> None:
    sealer = Sealer(None)
    payload = bytes(range(64))
    seen = {sealer.seal(checkpoint(payload), WHERE)}
    for i in range(len(payload)):
        for bit in range(8):
            flipped = bytearray(payload)
            flipped[i] ^= 1 << bit
            seen.add(sealer.seal(checkpoint(bytes(flipped)), WHERE))
    for length in range(len(payload)):
        seen.add(sealer.seal(checkpoint(payload[:length]), WHERE))
    assert len(seen) == 1 + 8 * len(payload) + len(payload)


def test_the_fields_are_framed_so_bytes_cannot_move_between_them() -> None:
    sealer = Sealer(None)
    moved = replace(checkpoint(b"bc"), adapter="a")
    assert sealer.seal(moved, "x") != sealer.seal(replace(moved, payload=b"c"), "x\0b")


def test_with_a_key_unsigned_checkpoints_are_refused() -> None:
    unsigned = sealed(Sealer(None))
    Sealer(None).check(unsigned, WHERE)  # control: valid as an unsigned checkpoint
    with pytest.raises(SignatureError, match="not signed"):
        Sealer(KEY).check(unsigned, WHERE)


def test_a_checkpoint_signed_with_another_key_is_refused() -> None:
    signed = sealed(Sealer(KEY))
    Sealer(KEY).check(signed, WHERE)  # control
    with pytest.raises(CorruptCheckpointError, match="another key"):
        Sealer(b"o" * 32).check(signed, WHERE)


def test_without_a_key_a_signed_checkpoint_cannot_be_checked_and_is_refused() -> None:
    with pytest.raises(SignatureError, match=SIGNING_KEY_ENV):
        Sealer(None).check(sealed(Sealer(KEY)), WHERE)


def test_seals_of_earlier_releases_are_checked() -> None:
    # Releases before 0.4 wrote the hex SHA-256 of the place and the payload only.
    old = checkpoint()
    digest = hashlib.sha256(WHERE.encode() + b"\0" + old.payload).hexdigest()
    legacy = replace(old, checksum=digest)
    Sealer(None).check(legacy, WHERE)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        Sealer(None).check(replace(legacy, payload=old.payload + b"\0"), WHERE)
    with pytest.raises(SignatureError):
        Sealer(KEY).check(legacy, WHERE)


@pytest.mark.parametrize(
    ("seal", "key"),
    [
        *[("md5:abc", None), ("sha256:", None), ("", None), ("x" * 64, None)],
        *[("hmac-sha256:\u00e9\u00e9", KEY), ("hmac-sha256:", KEY), ("md5:abc", KEY)],
    ],
)
def test_malformed_seals_are_corrupt_not_crashes(seal: str, key: bytes | None) -> None:
    with pytest.raises(CorruptCheckpointError):
        Sealer(key).check(replace(checkpoint(), checksum=seal), WHERE)


def test_the_key_comes_from_the_option_else_the_environment_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "e" * 20)
    from_env = Sealer.from_option(None)
    assert from_env.signs
    from_env.check(sealed(Sealer(b"e" * 20)), WHERE)
    explicit = Sealer.from_option("a" * 20)
    explicit.check(sealed(Sealer(b"a" * 20)), WHERE)  # the option wins over the environment
    assert "a" * 20 not in repr(explicit)
    monkeypatch.setenv(SIGNING_KEY_ENV, "")
    assert not Sealer.from_option(None).signs


def test_a_short_key_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(ValueError, match=r"secrets\.token_hex"):
        Sealer(b"short")


# -- rows beside the checkpoints -------------------------------------------------------------

ROW = ["interruption", "uid", 7, 3, 2, "its process died", 1]


@pytest.mark.parametrize("key", [None, KEY])
def test_a_row_seal_binds_its_study_and_every_field(key: bytes | None) -> None:
    sealer = Sealer(key)
    seal = sealer.seal_row(ROW)
    sealer.check_row(seal, ROW)
    for index, other in [(1, "other-uid"), (2, 8), (3, 4), (4, 3), (5, "moved"), (6, None)]:
        changed = [*ROW[:index], other, *ROW[index + 1 :]]
        with pytest.raises(CorruptCheckpointError, match=r"checksum|signature"):
            sealer.check_row(seal, changed)
    with pytest.raises(CorruptCheckpointError):
        sealer.check_row(seal, ["claim", *ROW[1:]])  # another kind of row


def test_row_seals_follow_the_key_rules_of_checkpoints() -> None:
    unsigned, signed = Sealer(None).seal_row(ROW), Sealer(KEY).seal_row(ROW)
    with pytest.raises(SignatureError, match="unsigned rows are refused"):
        Sealer(KEY).check_row(unsigned, ROW)
    with pytest.raises(SignatureError, match=SIGNING_KEY_ENV):
        Sealer(None).check_row(signed, ROW)
    with pytest.raises(CorruptCheckpointError, match="another key"):
        Sealer(b"o" * 32).check_row(signed, ROW)
    for malformed in ("", "x" * 64, "md5:abc", "sha256:"):
        with pytest.raises(CorruptCheckpointError):
            Sealer(None).check_row(malformed, ROW)
