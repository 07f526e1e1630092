"""Seals: the integrity check, and optionally the signature, stored with every checkpoint.

The rows kept beside the checkpoints (interruptions, claims) are sealed the same way, over
their own fields (:meth:`Sealer.seal_row`; which fields, in :mod:`._rows`).

A seal covers everything a resume trusts from a checkpoint row: the place the checkpoint belongs
to (study, stream, trial and logical number, so a row copied elsewhere fails), the adapter that
wrote it, the trial state and values it records (a resume may store them, to roll a trial
forward), the library versions it records, and the payload. Seals are strings of the form
``<scheme>:<base64url digest>``:

* ``sha256:`` — a SHA-256 digest. It detects corruption and misplaced rows, but anyone who can
  write the database can recompute it, so it does not detect a deliberate forgery.
* ``hmac-sha256:`` — an HMAC-SHA256 under a key that is never stored in the database (given as
  ``signing_key=`` or in :data:`SIGNING_KEY_ENV`), so without the key no row can be forged.

Releases before 0.4 wrote 64 hex digits: a SHA-256 over the place and the payload only. Such
seals are still checked, never written. Both forms fit the 64-character column those releases
created.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
import hashlib
import hmac
import json
import os
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import SignatureError


if TYPE_CHECKING:
    from optuna_checkpoint.stores._base import Checkpoint


SIGNING_KEY_ENV = "OPTUNA_CHECKPOINT_SIGNING_KEY"
"""The environment variable read for the signing key when none is passed explicitly."""

_SHA256 = "sha256"
_HMAC = "hmac-sha256"
_MIN_KEY_BYTES = 16


def place(study_uid: str, stream: str, trial_id: int | None, logical_number: int) -> str:
    """Return the text that binds a checkpoint to its study, stream and trial."""
    return f"{study_uid}/{stream}/{'initial' if trial_id is None else trial_id}/{logical_number}"


def describe(checkpoint: Checkpoint) -> str:
    """Name a stored checkpoint in a message: ``the checkpoint of trial id 7``."""
    if checkpoint.trial_id is None:
        return "the initial checkpoint"
    return f"the checkpoint of trial id {checkpoint.trial_id}"


class Sealer:
    """Seals checkpoints and checks their seals, with or without a signing key.

    Args:
        key: The signing key, or ``None`` to seal with a plain digest. The key is held only in
            memory; it is never written to the database, logged or shown in ``repr``.
    """

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) < _MIN_KEY_BYTES:
            raise ValueError(
                f"the signing key must be at least {_MIN_KEY_BYTES} bytes long; generate one "
                'with python -c "import secrets; print(secrets.token_hex(32))"'
            )
        self._key = key

    @classmethod
    def from_option(cls, signing_key: str | bytes | None) -> Sealer:
        """Return the sealer for a ``signing_key=`` option, else for :data:`SIGNING_KEY_ENV`.

        A string key is used as its UTF-8 bytes; an empty environment variable means no key.
        """
        if signing_key is None:
            signing_key = os.environ.get(SIGNING_KEY_ENV) or None
        if isinstance(signing_key, str):
            signing_key = signing_key.encode()
        return cls(signing_key)

    @property
    def signs(self) -> bool:
        """Whether checkpoints are signed (a key is configured)."""
        return self._key is not None

    def __repr__(self) -> str:
        return f"Sealer(signs={self.signs})"

    def seal(self, checkpoint: Checkpoint, where: str) -> str:
        """Return the seal of ``checkpoint`` (its own ``checksum`` is ignored) at ``where``."""
        return self._seal_message(_message(checkpoint, where))

    def seal_row(self, fields: Sequence[Any]) -> str:
        """Return the seal of a row kept beside the checkpoints (see :mod:`._rows`).

        ``fields`` name the row's kind and study first, then every field a reader obeys.
        """
        return self._seal_message(_row_message(fields))

    def check(self, checkpoint: Checkpoint, where: str) -> None:
        """Check the seal stored in ``checkpoint.checksum``.

        Raises:
            CorruptCheckpointError: The checkpoint does not match its seal: it was corrupted,
                altered, copied from elsewhere, or signed with another key.
            SignatureError: A key is configured and the checkpoint is not signed, or the
                checkpoint is signed and no key is configured to check it.
        """
        scheme, _, digest = checkpoint.checksum.rpartition(":")
        self._check_digest(
            scheme,
            digest,
            _message(checkpoint, where),
            legacy=_legacy_digest(checkpoint, where) if scheme == "" else None,
            unsigned=(
                "unsigned checkpoints are refused. If the study was run before signing was "
                "turned on, sign it with optuna-checkpoint rekey"
            ),
            copied="study, stream or trial",
        )

    def check_row(self, seal: str, fields: Sequence[Any]) -> None:
        """Check the seal of a row kept beside the checkpoints, as :meth:`check` does.

        Raises:
            CorruptCheckpointError: The row does not match its seal.
            SignatureError: The row is unsigned and a key is configured, or signed and none is.
        """
        scheme, _, digest = seal.rpartition(":")
        self._check_digest(
            scheme,
            digest,
            _row_message(fields),
            legacy=None,
            unsigned=(
                "unsigned rows are refused: it was written by someone who lacks the key, or "
                "before signing was turned on (then sign the study with optuna-checkpoint "
                "rekey)"
            ),
            copied="study or trial",
        )

    def _seal_message(self, message: bytes) -> str:
        if self._key is None:
            return f"{_SHA256}:{_b64(hashlib.sha256(message).digest())}"
        return f"{_HMAC}:{_b64(hmac.digest(self._key, message, 'sha256'))}"

    def _check_digest(
        self,
        scheme: str,
        digest: str,
        message: bytes,
        *,
        legacy: str | None,
        unsigned: str,
        copied: str,
    ) -> None:
        """Compare ``digest`` with the one ``scheme`` gives for ``message`` (``legacy``: hex)."""
        if scheme == "" and legacy is not None:
            expected = legacy
        elif scheme == _SHA256:
            expected = _b64(hashlib.sha256(message).digest())
        elif scheme == _HMAC:
            if self._key is None:
                raise SignatureError(
                    "it is signed, and no signing key is configured to check it: pass "
                    f"signing_key= to CheckpointingSampler or set {SIGNING_KEY_ENV}"
                )
            expected = _b64(hmac.digest(self._key, message, "sha256"))
        else:
            raise CorruptCheckpointError(
                f"its seal has the unknown scheme {scheme[:20]!r}: it was altered, or written by "
                "a newer optuna-checkpoint (upgrade to read it)"
            )
        if self._key is not None and scheme != _HMAC:
            raise SignatureError(
                f"it is not signed, and a signing key is configured, so {unsigned}"
            )
        if not hmac.compare_digest(digest.encode(), expected.encode()):
            what = "its signature" if scheme == _HMAC else "its checksum"
            also = ", or signed with another key" if scheme == _HMAC else ""
            raise CorruptCheckpointError(
                f"it fails {what}: it was corrupted or altered{also}, or copied from another "
                f"{copied}"
            )

    def check_stored(
        self, checkpoint: Checkpoint, study_uid: str, stream: str, *, remedy: str = ""
    ) -> None:
        """Check the seal of a checkpoint stored in ``stream`` of a study, naming it if not.

        Raises:
            CorruptCheckpointError: As :meth:`check`, with the checkpoint named and ``remedy``
                appended.
            SignatureError: Likewise.
        """
        where = place(study_uid, stream, checkpoint.trial_id, checkpoint.logical_number)
        try:
            self.check(checkpoint, where)
        except CheckpointError as e:
            named = f"{describe(checkpoint)} in stream {stream!r} cannot be trusted: {e}."
            raise type(e)(named + remedy) from e


def _message(checkpoint: Checkpoint, where: str) -> bytes:
    # JSON frames the fields unambiguously; floats as hex, so the values are bound bit for bit.
    values = checkpoint.trial_values
    hexes = None if values is None else [float(v).hex() for v in values]
    versions = checkpoint.versions
    fields = json.dumps(
        [where, checkpoint.adapter, checkpoint.trial_state, hexes, versions], sort_keys=True
    )
    return fields.encode() + b"\0" + checkpoint.payload


def _row_message(fields: Sequence[Any]) -> bytes:
    # No NUL byte (JSON escapes it), so never the message of a checkpoint, which has one.
    return json.dumps(list(fields), sort_keys=True).encode()


def _legacy_digest(checkpoint: Checkpoint, where: str) -> str:
    digest = hashlib.sha256(where.encode())
    digest.update(b"\0")
    digest.update(checkpoint.payload)
    return digest.hexdigest()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
