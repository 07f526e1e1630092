"""The export document: its format, how it is read, and the seal over what is not a checkpoint.

An export carries every stream of a study with its checkpoints, its interruptions and claims,
and the exported study's trial ids. Each checkpoint is sealed for its *portable place* (the
exported study's name, the stream, the trial's number and its logical number: no database id),
and the document is sealed as a whole over everything else (:func:`metadata_fields`), so that
neither a checkpoint nor a stream's fingerprint, an interruption, a claim, nor which checkpoints
a stream holds can be changed unnoticed. Version 1 (before the document's own seal) is read
only without a signing key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import SignatureError
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place


FORMAT = "optuna-checkpoint-export"
"""The ``format`` field of an export document."""

VERSION = 2
"""The version of the export document this release writes (and the newest it reads). 1: no
seal of the document's own."""

SEALED_SINCE = 2
"""The first version whose documents carry a seal of their own."""


def portable_place(study_name: str, stream: str, trial_number: int | None, logical: int) -> str:
    """The place an exported checkpoint is sealed for: no database id in it."""
    return place(f"export:{study_name}", stream, trial_number, logical)


@dataclass(frozen=True)
class ExportedCheckpoint:
    trial_number: int | None
    logical_number: int
    trial_state: str | None
    trial_values: list[float] | None
    adapter: str
    payload: bytes
    seal: str
    versions: dict[str, str] | None


@dataclass(frozen=True)
class ExportedStream:
    name: str
    fingerprint: Any
    first_trial_number: int
    checkpoints: list[ExportedCheckpoint]


@dataclass(frozen=True)
class ExportedInterruption:
    trial_number: int
    logical_number: int
    reason: str
    stream: str | None


@dataclass(frozen=True)
class Document:
    study_name: str
    streams: list[ExportedStream]
    interruptions: list[ExportedInterruption]
    claims: list[tuple[int, str]]
    trial_ids: dict[int, int]  # the exported study's trial ids, to their numbers
    seal: str | None = None  # over metadata_fields(); None in version 1


class _Malformed(CheckpointError):
    pass


def parse(document: Mapping[str, Any]) -> Document:
    """Read an export document, refusing anything this release does not understand."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise CheckpointError(
            "this is not an optuna-checkpoint export (its format field is not "
            f"{FORMAT!r}); export one with optuna-checkpoint export"
        )
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"the export has an invalid version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"the export is of version {version}, and this release reads versions up to "
            f"{VERSION}: upgrade optuna-checkpoint to import it"
        )
    try:
        parsed = _document(document)
        if version >= SEALED_SINCE:
            parsed = replace(parsed, seal=_get(document, "seal", str, "the document"))
    except _Malformed as e:
        raise CheckpointError(f"the export is malformed: {e}") from None
    return parsed


def metadata_fields(document: Mapping[str, Any]) -> list[Any]:
    """What an export's own seal covers: all but the checkpoints' content.

    That is the streams (name, fingerprint, first trial, and the seal of each checkpoint, so
    also which checkpoints they hold and in what order), the interruptions, the claims and the
    exported study's trial ids. Each checkpoint's own seal covers the rest.
    """
    return [
        "export",
        document["version"],
        document["study_name"],
        [
            [
                s["name"],
                s["fingerprint"],
                s["first_trial_number"],
                [c["seal"] for c in s["checkpoints"]],
            ]
            for s in document["streams"]
        ],
        document["interruptions"],
        document["claims"],
        document["trial_ids"],
    ]


def check_metadata(sealer: Sealer, document: Mapping[str, Any], parsed: Document) -> None:
    """Check the export's own seal (:func:`metadata_fields`), before any of it is used.

    Raises:
        CorruptCheckpointError: It fails: the export was altered, or sealed with another key.
        SignatureError: The seal cannot be checked with the key given, or the export is of a
            version without it while a key is given.
    """
    what = f"the export of study {parsed.study_name!r}"
    if parsed.seal is None:
        if sealer.signs:
            raise SignatureError(
                f"{what} is of version 1, whose streams, interruptions and claims carry no "
                "seal, and a signing key is configured, so it is refused: export the study "
                "again with this release"
            )
        return  # as version 1 was read: only its checkpoints are sealed
    try:
        sealer.check_row(parsed.seal, metadata_fields(document))
    except CheckpointError as e:
        raise type(e)(
            f"{what} cannot be trusted: {e}. Unless the key is wrong, its streams, "
            "interruptions, claims or trial list were changed after it was exported: export "
            "the study again from its storage"
        ) from e


def _document(document: Mapping[str, Any]) -> Document:
    study_name = _get(document, "study_name", str, "the document")
    streams = [_stream(s) for s in _get(document, "streams", list, "the document")]
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise _Malformed("two streams have the same name")
    interruptions = []
    for raw in _get(document, "interruptions", list, "the document"):
        what = "an interruption"
        stream = _get(raw, "stream", (str, type(None)), what)
        if stream is not None and stream not in names:
            raise _Malformed(f"an interruption names the stream {stream!r}, which it lacks")
        interruptions.append(
            ExportedInterruption(
                trial_number=_number(raw, "trial_number", what),
                logical_number=_get(raw, "logical_number", int, what),
                reason=_get(raw, "reason", str, what),
                stream=stream,
            )
        )
    claims = []
    for raw in _get(document, "claims", list, "the document"):
        stream = _get(raw, "stream", str, "a claim")
        if stream not in names:
            raise _Malformed(f"a claim names the stream {stream!r}, which it lacks")
        claims.append((_number(raw, "trial_number", "a claim"), stream))
    trial_ids = {}
    for raw in _get(document, "trial_ids", list, "the document"):
        if not (isinstance(raw, list) and len(raw) == 2 and all(type(v) is int for v in raw)):
            raise _Malformed("trial_ids holds an entry that is not a pair of integers")
        trial_ids[raw[0]] = raw[1]
    return Document(study_name, streams, interruptions, claims, trial_ids)


def _stream(raw: Any) -> ExportedStream:
    name = _get(raw, "name", str, "a stream")
    what = f"stream {name!r}"
    if "fingerprint" not in raw:
        raise _Malformed(f"{what} has no fingerprint")
    checkpoints = [_checkpoint(c, name) for c in _get(raw, "checkpoints", list, what)]
    if not checkpoints or checkpoints[0].trial_number is not None:
        raise _Malformed(f"{what} does not start with its initial checkpoint")
    numbers = [c.trial_number for c in checkpoints]
    if len(set(numbers)) != len(numbers):
        raise _Malformed(f"{what} has two checkpoints of one trial")
    first = _number(raw, "first_trial_number", what)
    return ExportedStream(name, raw["fingerprint"], first, checkpoints)


def _checkpoint(raw: Any, stream: str) -> ExportedCheckpoint:
    what = f"a checkpoint of stream {stream!r}"
    number = raw.get("trial_number") if isinstance(raw, Mapping) else None
    if number is not None:
        number = _number(raw, "trial_number", what)
        what = f"the checkpoint of trial {number} in stream {stream!r}"
    hexes = _get(raw, "trial_values", (list, type(None)), what)
    try:
        values = None if hexes is None else [float.fromhex(h) for h in hexes]
        payload = base64.b64decode(_get(raw, "payload", str, what), validate=True)
    except (TypeError, ValueError, binascii.Error) as e:
        raise _Malformed(f"{what} has malformed values or payload ({e})") from None
    return ExportedCheckpoint(
        trial_number=number,
        logical_number=_get(raw, "logical_number", int, what),
        trial_state=_get(raw, "trial_state", (str, type(None)), what),
        trial_values=values,
        adapter=_get(raw, "adapter", str, what),
        payload=payload,
        seal=_get(raw, "seal", str, what),
        versions=_versions(raw, what),
    )


def _versions(raw: Any, what: str) -> dict[str, str] | None:
    versions: dict[str, str] | None = _get(raw, "versions", (dict, type(None)), what)
    if versions is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
    ):
        raise _Malformed(f"{what} has malformed library versions")
    return versions


def _number(raw: Any, key: str, what: str) -> int:
    number: int = _get(raw, key, int, what)
    if number < 0:
        raise _Malformed(f"{what} has a negative {key}")
    return number


def _get(raw: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(raw, Mapping):
        raise _Malformed(f"{what} is not an object")
    if key not in raw:
        raise _Malformed(f"{what} has no {key!r}")
    value = raw[key]
    # bool is an int to Python, never to an export.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Malformed(f"{what} has a {key!r} of the wrong type")
    return value
