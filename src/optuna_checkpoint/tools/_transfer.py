"""Export a study's checkpoints to one JSON document, and import them into a copy of the study.

``optuna.copy_study`` copies a study's trials but not its checkpoints, so a copied study would
start a new stream from the seed. :func:`export_checkpoints` reads every stream, checkpoint,
interruption and claim of a study; :func:`import_checkpoints` plants them into the copy, whose
trials carry the same numbers, so the copy resumes exactly where the original stands.

A checkpoint's seal binds it to its place, and a place names database ids, which differ between
the two storages. So each checkpoint is checked where it is stored and sealed again for a
*portable place* (the exported study's name, the stream, the trial's number and its logical
number); the import checks that seal before writing anything, then seals each checkpoint for its
new place. Both ends use the same signing key, if any, so a signed study stays signed and a
document altered by someone without the key is refused.

Only the checkpoints are sealed. Stream fingerprints, interruptions and claims are carried as
they are, as unprotected as they are in the database itself.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._rows import describe_interruption
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import describe
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state.adapters._registry import carry_over_study
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.tools._transplant import StudyRef
from optuna_checkpoint.tools._transplant import plant_stream
from optuna_checkpoint.tools._transplant import store_of


FORMAT = "optuna-checkpoint-export"
"""The ``format`` field of an export document."""

VERSION = 1
"""The version of the export document this release writes (and the newest it reads)."""

_CLAIMS_CHUNK = 5000  # trial ids per claims lookup: an IN list stays well within SQL limits


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_checkpoints` wrote.

    Attributes:
        study_name: The study that received the checkpoints.
        streams: How many streams were created.
        checkpoints: How many checkpoints they hold in all, initial ones included.
        interruptions: How many interrupted trials were recorded.
        claims: How many trials were claimed for a stream.
    """

    study_name: str
    streams: int
    checkpoints: int
    interruptions: int
    claims: int


def portable_place(study_name: str, stream: str, trial_number: int | None, logical: int) -> str:
    """The place an exported checkpoint is sealed for: no database id in it."""
    return place(f"export:{study_name}", stream, trial_number, logical)


def export_checkpoints(
    storage: BaseStorage, study_name: str, *, signing_key: str | bytes | None = None
) -> dict[str, Any]:
    """Return every checkpoint stream of a study as one JSON-compatible document.

    Reading writes nothing. Every checkpoint's seal is checked where it is stored before it is
    exported, and the checkpoint is sealed again, with the same key, for a place that names
    the trial by number (ids differ between storages), so that :func:`import_checkpoints` can
    check it in another storage.

    Example:

        .. code-block:: python

            source = optuna.storages.get_storage("sqlite:///a.db")
            target = optuna.storages.get_storage("sqlite:///b.db")
            optuna.copy_study(from_study_name="demo", from_storage=source, to_storage=target)
            import_checkpoints(target, "demo", export_checkpoints(source, "demo"))

    Args:
        storage: The study's storage.
        study_name: The study to export.
        signing_key: The key the checkpoints are signed with, as for
            :class:`~optuna_checkpoint.CheckpointingSampler`; defaults to the environment
            variable ``OPTUNA_CHECKPOINT_SIGNING_KEY``.

    Returns:
        ``{"format", "version", "study_name", "streams", "interruptions", "claims",
        "trial_ids"}``: per
        stream its name, fingerprint, first trial number and checkpoints (initial first, then
        oldest to newest; trials by number, values as ``float.hex``, payloads in base64); per
        interrupted trial its number, logical number, reason and stream; per claimed trial
        its number and stream; and each trial's id with its number, so that what the sampler
        stored in the study's attributes about trials can be pointed at the copies.

    Raises:
        StudyNotFoundError: The storage has no study of that name.
        CheckpointError: The study has no checkpoint streams, or a stream has no initial
            checkpoint.
        CorruptCheckpointError: A checkpoint, or a record of an interrupted or claimed trial,
            fails its seal (it was altered or damaged) or names a trial the study does not
            have.
        SignatureError: A checkpoint or record is unsigned while a key is given, or signed
            while none is.
    """
    sealer = Sealer.from_option(signing_key)
    study = _find_study(storage, study_name)
    store = study.existing_store()  # creates nothing: exporting writes nothing
    streams = [] if store is None else store.list_streams(study.uid)
    if store is None or not streams:
        raise CheckpointError(
            f"study {study_name!r} has no checkpoint streams, so there is nothing to export: it "
            "was not run with CheckpointingSampler, or its checkpoints were deleted"
        )
    numbers = {
        t._trial_id: t.number for t in storage.get_all_trials(study.study_id, deepcopy=False)
    }

    def number_of(trial_id: int, what: str) -> int:
        if trial_id not in numbers:
            raise CorruptCheckpointError(
                f"{what} names a trial that study {study_name!r} does not have: the row was "
                "altered, or copied from another study; check the study with "
                "optuna-checkpoint verify"
            )
        return numbers[trial_id]

    exported_streams = []
    for stream in streams:
        oldest_first = store.all_checkpoints(stream.stream_id)
        initial = [c for c in oldest_first if c.trial_id is None]
        if not initial:
            raise CheckpointError(
                f"stream {stream.name!r} of study {study_name!r} has no initial checkpoint, so "
                "it cannot be planted elsewhere; check the study with optuna-checkpoint verify"
            )
        exported = []
        for checkpoint in initial + [c for c in oldest_first if c.trial_id is not None]:
            sealer.check_stored(checkpoint, study.uid, stream.name)
            number = (
                None
                if checkpoint.trial_id is None
                else number_of(
                    checkpoint.trial_id,
                    f"{describe(checkpoint)} (logical trial {checkpoint.logical_number}) in "
                    f"stream {stream.name!r}",
                )
            )
            where = portable_place(study_name, stream.name, number, checkpoint.logical_number)
            values = checkpoint.trial_values
            exported.append(
                {
                    "trial_number": number,
                    "logical_number": checkpoint.logical_number,
                    "trial_state": checkpoint.trial_state,
                    "trial_values": None if values is None else [float(v).hex() for v in values],
                    "adapter": checkpoint.adapter,
                    "payload": base64.b64encode(checkpoint.payload).decode("ascii"),
                    "versions": checkpoint.versions,
                    "seal": sealer.seal(checkpoint, where),
                }
            )
        exported_streams.append(
            {
                "name": stream.name,
                "fingerprint": stream.fingerprint,
                "first_trial_number": stream.first_trial_number,
                "checkpoints": exported,
            }
        )

    names = {s.stream_id: s.name for s in streams}
    rows = SealedRows(store, study.uid, sealer)
    interruptions = [
        {
            "trial_number": number_of(i.trial_id, describe_interruption(i)),
            "logical_number": i.logical_number,
            "reason": i.reason,
            "stream": None if i.stream_id is None else names.get(i.stream_id),
        }
        for i in rows.interruptions()
    ]
    trial_ids = sorted(numbers, key=numbers.__getitem__)
    claims: list[dict[str, Any]] = []
    for start in range(0, len(trial_ids), _CLAIMS_CHUNK):
        chunk = trial_ids[start : start + _CLAIMS_CHUNK]
        found = rows.claims(chunk)
        claims.extend(
            {"trial_number": numbers[trial_id], "stream": names[found[trial_id]]}
            for trial_id in chunk
            # A claim of a stream that no longer exists would name nothing in the target.
            if trial_id in found and found[trial_id] in names
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "study_name": study_name,
        "streams": exported_streams,
        "interruptions": interruptions,
        "claims": claims,
        # What the sampler stored in the study's attributes names trials by id (NSGA's
        # parent populations); optuna.copy_study copies those as they are.
        "trial_ids": [[trial_id, number] for trial_id, number in sorted(numbers.items())],
    }


def import_checkpoints(
    storage: BaseStorage,
    study_name: str,
    document: Mapping[str, Any],
    *,
    signing_key: str | bytes | None = None,
) -> ImportReport:
    """Plant the checkpoints of an export document into a copy of the exported study.

    The study must exist and hold the exported study's trials under the same numbers, as
    ``optuna.copy_study`` makes it, and must have no checkpoint stream yet (streams are not
    merged). The whole document is checked before anything is written: its format, that every
    trial it names exists (and, where both are COMPLETE, has the values the checkpoint
    recorded), and every checkpoint's seal. Then each stream is created with its checkpoints,
    sealed for their new place, and the interruptions and claims are recorded. A worker
    resuming the study afterwards continues the exported study's trajectory exactly.

    Writing is one step per stream, interruption list and claim, not one transaction: if it
    fails midway, delete the copy, copy the study again and import again.

    Args:
        storage: The storage of the study that receives the checkpoints.
        study_name: That study's name (it may differ from the exported study's).
        document: What :func:`export_checkpoints` returned (or its JSON, parsed).
        signing_key: The key the export was signed with, as for
            :class:`~optuna_checkpoint.CheckpointingSampler`; defaults to the environment
            variable ``OPTUNA_CHECKPOINT_SIGNING_KEY``.

    Returns:
        What was written.

    Raises:
        StudyNotFoundError: The storage has no study of that name.
        CheckpointError: The document is not an export this release reads, or is malformed;
            a trial it names is missing from the study (or differs); the study already has
            checkpoint streams.
        CorruptCheckpointError: A checkpoint fails its seal (the document was altered), or
            its payload is of a format this release cannot read.
        SignatureError: A checkpoint is unsigned while a key is given, or signed while none
            is.
    """
    sealer = Sealer.from_option(signing_key)
    parsed = _parse(document)
    # The document's own integrity first: it needs no target, and explains most refusals.
    unplaced = [
        [_check_seal(sealer, parsed.study_name, s, c) for c in s.checkpoints]
        for s in parsed.streams
    ]
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise StudyNotFoundError(f"the storage has no study named {study_name!r}") from None
    trials = {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}
    _check_trials(study_name, parsed, trials)
    study = StudyRef.of(storage, study_name)
    existing = study.existing_store()  # creates nothing: a refused import writes nothing
    if existing is not None and existing.list_streams(study.uid):
        raise CheckpointError(
            f"study {study_name!r} already has checkpoint streams; importing does not merge "
            "streams. Import into a fresh copy (optuna.copy_study to a new study name)"
        )

    ids = {number: trial._trial_id for number, trial in trials.items()}
    planned = [
        (
            stream,
            [
                replace(
                    checkpoint, trial_id=None if c.trial_number is None else ids[c.trial_number]
                )
                for c, checkpoint in zip(stream.checkpoints, checkpoints, strict=True)
            ],
        )
        for stream, checkpoints in zip(parsed.streams, unplaced, strict=True)
    ]
    for stream, checkpoints in planned:
        plant_stream(
            study,
            name=stream.name,
            fingerprint=stream.fingerprint,
            first_trial_number=stream.first_trial_number,
            checkpoints=checkpoints,
            sealer=sealer,
        )
    store = store_of(study)
    rows = SealedRows(store, study.uid, sealer)
    planted = {s.name: s for s in store.list_streams(study.uid)}
    if parsed.interruptions:
        rows.add_interruptions(
            study.study_id,
            [
                Interruption(
                    trial_id=ids[i.trial_number],
                    trial_number=i.trial_number,
                    logical_number=i.logical_number,
                    reason=i.reason,
                    stream_id=None if i.stream is None else planted[i.stream].stream_id,
                )
                for i in parsed.interruptions
            ],
        )
    carry_over_study(
        storage,
        study.study_id,
        {old: ids[number] for old, number in parsed.trial_ids.items() if number in ids},
    )
    for number, name in parsed.claims:
        if not rows.claim(planted[name], study.study_id, ids[number]):
            raise CheckpointError(
                f"trial {number} of study {study_name!r} was claimed by another stream while "
                "importing: a worker is running on the study; stop it, delete the copy, copy "
                "the study again and import again"
            )
    return ImportReport(
        study_name=study_name,
        streams=len(planned),
        checkpoints=sum(len(checkpoints) for _, checkpoints in planned),
        interruptions=len(parsed.interruptions),
        claims=len(parsed.claims),
    )


def _check_seal(sealer: Sealer, study_name: str, stream: _Stream, c: _Checkpoint) -> Checkpoint:
    """Check an exported checkpoint's seal at its portable place; return it, not yet placed."""
    checkpoint = Checkpoint(
        trial_id=None,  # the seal names the trial by number; its id in the target comes later
        logical_number=c.logical_number,
        trial_state=c.trial_state,
        trial_values=c.trial_values,
        adapter=c.adapter,
        payload=c.payload,
        checksum=c.seal,
        versions=c.versions,
    )
    where = portable_place(study_name, stream.name, c.trial_number, c.logical_number)
    try:
        sealer.check(checkpoint, where)
        _codec.inspect_payload(checkpoint.payload)  # of a format this release reads
    except CheckpointError as e:
        at = "initial" if c.trial_number is None else f"of trial {c.trial_number}"
        raise type(e)(
            f"the exported checkpoint {at} in stream {stream.name!r} cannot be trusted: {e}"
        ) from e
    return checkpoint


def _find_study(storage: BaseStorage, study_name: str) -> StudyRef:
    try:
        return StudyRef.of(storage, study_name)
    except KeyError:
        raise StudyNotFoundError(f"the storage has no study named {study_name!r}") from None


def _check_trials(study_name: str, parsed: _Document, trials: Mapping[int, Any]) -> None:
    """Every trial the document names exists; where both are COMPLETE, with the same values."""
    named = {0}  # trial 0 identifies the study (its uid), so the copy must have it too
    for stream in parsed.streams:
        named.update(c.trial_number for c in stream.checkpoints if c.trial_number is not None)
    named.update(i.trial_number for i in parsed.interruptions)
    named.update(number for number, _ in parsed.claims)
    missing = sorted(n for n in named if n not in trials)
    if missing:
        raise CheckpointError(
            f"study {study_name!r} has no trial {missing[0]}, which the export names "
            f"({len(missing)} missing in all): import into a copy of the exported study made "
            "with optuna.copy_study; run it first"
        )
    for stream in parsed.streams:
        for c in stream.checkpoints:
            if c.trial_number is None or c.trial_state != TrialState.COMPLETE.name:
                continue
            trial = trials[c.trial_number]
            if trial.state != TrialState.COMPLETE or c.trial_values is None:
                continue  # e.g. a trial whose end a journal had not written yet
            if [v.hex() for v in trial.values] != [v.hex() for v in c.trial_values]:
                raise CheckpointError(
                    f"trial {c.trial_number} of study {study_name!r} has other values than the "
                    f"exported study's trial {c.trial_number}: the study is not a copy of "
                    f"{parsed.study_name!r}; import into a copy made with optuna.copy_study"
                )


@dataclass(frozen=True)
class _Checkpoint:
    trial_number: int | None
    logical_number: int
    trial_state: str | None
    trial_values: list[float] | None
    adapter: str
    payload: bytes
    seal: str
    versions: dict[str, str] | None


@dataclass(frozen=True)
class _Stream:
    name: str
    fingerprint: Any
    first_trial_number: int
    checkpoints: list[_Checkpoint]


@dataclass(frozen=True)
class _Interruption:
    trial_number: int
    logical_number: int
    reason: str
    stream: str | None


@dataclass(frozen=True)
class _Document:
    study_name: str
    streams: list[_Stream]
    interruptions: list[_Interruption]
    claims: list[tuple[int, str]]
    trial_ids: dict[int, int]  # the exported study's trial ids, to their numbers


class _Malformed(CheckpointError):
    pass


def _parse(document: Mapping[str, Any]) -> _Document:
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
        return _document(document)
    except _Malformed as e:
        raise CheckpointError(f"the export is malformed: {e}") from None


def _document(document: Mapping[str, Any]) -> _Document:
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
            _Interruption(
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
    return _Document(study_name, streams, interruptions, claims, trial_ids)


def _stream(raw: Any) -> _Stream:
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
    return _Stream(name, raw["fingerprint"], _number(raw, "first_trial_number", what), checkpoints)


def _checkpoint(raw: Any, stream: str) -> _Checkpoint:
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
    return _Checkpoint(
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
