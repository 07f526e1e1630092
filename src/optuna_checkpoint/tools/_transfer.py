"""Export a study's checkpoints to one JSON document, and import them into a copy of the study.

``optuna.copy_study`` copies a study's trials but not its checkpoints, so a copied study would
start a new stream from the seed. :func:`export_checkpoints` reads every stream, checkpoint,
interruption and claim of a study; :func:`import_checkpoints` plants them into the copy, whose
trials carry the same numbers, so the copy resumes exactly where the original stands.

A checkpoint's seal binds it to its place, and a place names database ids, which differ between
the two storages. So each checkpoint, interruption and claim is checked where it is stored, and
the document is sealed again for portable places (:mod:`._transfer_document`); the import checks
every seal before writing anything, then seals each checkpoint and row for its new place. Both
ends use the same signing key, if any, so a signed study stays signed and a document altered by
someone without the key is refused.

The import writes in one transaction on SQL storages, so a failure leaves the copy as it was;
on the others it is resumable: run again, it completes what a failure left undone.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._rows import describe_interruption
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import describe
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state.adapters._registry import carried_over
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.tools._transfer_document import FORMAT
from optuna_checkpoint.tools._transfer_document import VERSION
from optuna_checkpoint.tools._transfer_document import Document
from optuna_checkpoint.tools._transfer_document import ExportedCheckpoint
from optuna_checkpoint.tools._transfer_document import ExportedStream
from optuna_checkpoint.tools._transfer_document import check_metadata
from optuna_checkpoint.tools._transfer_document import metadata_fields
from optuna_checkpoint.tools._transfer_document import parse
from optuna_checkpoint.tools._transfer_document import portable_place
from optuna_checkpoint.tools._transplant import StudyRef
from optuna_checkpoint.tools._transplant import store_of


__all__ = [
    "FORMAT",
    "VERSION",
    "ImportReport",
    "export_checkpoints",
    "import_checkpoints",
    "portable_place",
]

_CARRIED_OVER = "optuna_checkpoint:import_carried_over"
# A study attribute: the rewrites of the sampler's caches an import computed, written before
# them, so that an import run again after a failure writes the same ones, not remapped twice.


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
    found = rows.claims(trial_ids)
    claims: list[dict[str, Any]] = [
        {"trial_number": numbers[trial_id], "stream": names[found[trial_id]]}
        for trial_id in trial_ids
        # A claim of a stream that no longer exists would name nothing in the target.
        if trial_id in found and found[trial_id] in names
    ]
    document: dict[str, Any] = {
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
    document["seal"] = sealer.seal_row(metadata_fields(document))
    return document


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
    merged). The whole document is checked before anything is written: its format, its own
    seal (over the streams, interruptions, claims and trial list), that every trial it names
    exists (and, where both are COMPLETE, has the values the checkpoint recorded), and every
    checkpoint's seal. Then each stream is created with its checkpoints, sealed for their new
    place, and the interruptions and claims are recorded. A worker resuming the study afterwards
    continues the exported study's trajectory exactly.

    On SQL storages the streams, checkpoints, interruptions and claims are written in one
    transaction: a failure leaves the study without any. Elsewhere (journals, the gRPC proxy)
    they are written step by step, and an import that failed midway is completed by running it
    again with the same document. The sampler caches kept in the study's attributes are pointed
    at the copy's trials first (once, however often the import runs).

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
            checkpoint streams (other than those of an unfinished import of this document).
        CorruptCheckpointError: The document's seal or a checkpoint's fails (the document was
            altered), or a payload is of a format this release cannot read.
        SignatureError: A seal is unsigned while a key is given, or signed while none is; or
            the document is of version 1 (no seal of its own) while a key is given.
    """
    sealer = Sealer.from_option(signing_key)
    parsed = parse(document)
    # The document's own integrity first: it needs no target, and explains most refusals.
    check_metadata(sealer, document, parsed)
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
    _check_no_other_streams(study, parsed)

    ids = {number: trial._trial_id for number, trial in trials.items()}
    _carry_over(study, {old: ids[n] for old, n in parsed.trial_ids.items() if n in ids})
    store = store_of(study)
    rows = SealedRows(store, study.uid, sealer)
    planted = [
        PlantedStream(
            stream.name,
            stream.fingerprint,
            stream.first_trial_number,
            [
                _placed(sealer, study.uid, stream.name, checkpoint, ids, c.trial_number)
                for c, checkpoint in zip(stream.checkpoints, checkpoints, strict=True)
            ],
        )
        for stream, checkpoints in zip(parsed.streams, unplaced, strict=True)
    ]

    def rows_for(stream_ids: Mapping[str, int]) -> tuple[list[Interruption], dict[int, Claim]]:
        interruptions = [
            rows.sealed(
                Interruption(
                    trial_id=ids[i.trial_number],
                    trial_number=i.trial_number,
                    logical_number=i.logical_number,
                    reason=i.reason,
                    stream_id=None if i.stream is None else stream_ids[i.stream],
                )
            )
            for i in parsed.interruptions
        ]
        claims = {
            ids[number]: Claim(stream_ids[name], rows.claim_seal(ids[number], stream_ids[name]))
            for number, name in parsed.claims
        }
        return interruptions, claims

    store.plant_streams(study.study_id, study.uid, planted, rows_for, current_owner())
    return ImportReport(
        study_name=study_name,
        streams=len(planted),
        checkpoints=sum(len(p.checkpoints) for p in planted),
        interruptions=len(parsed.interruptions),
        claims=len(parsed.claims),
    )


def _placed(
    sealer: Sealer,
    study_uid: str,
    stream_name: str,
    checkpoint: Checkpoint,
    ids: Mapping[int, int],
    trial_number: int | None,
) -> Checkpoint:
    """An exported checkpoint as it is stored in the copy: its trial's id there, sealed there."""
    trial_id = None if trial_number is None else ids[trial_number]
    placed = replace(checkpoint, trial_id=trial_id)
    where = place(study_uid, stream_name, trial_id, placed.logical_number)
    return replace(placed, checksum=sealer.seal(placed, where))


def _check_no_other_streams(study: StudyRef, parsed: Document) -> None:
    """Refuse a study with checkpoint streams, unless an unfinished import of ``parsed`` left them.

    Creates nothing: a refused import writes nothing.
    """
    existing = study.existing_store()
    found = [] if existing is None else existing.list_streams(study.uid)
    if not found:
        return
    assert existing is not None
    if not existing.plants_atomically and _left_by_import_of(found, parsed):
        return  # resumed: the planting completes what is missing
    raise CheckpointError(
        f"study {study.study_name!r} already has checkpoint streams; importing does not merge "
        "streams. Import into a fresh copy (optuna.copy_study to a new study name)"
    )


def _left_by_import_of(found: list[Stream], parsed: Document) -> bool:
    """Whether the streams ``found`` are those an import of ``parsed`` creates, and no more."""
    expected = {s.name: s for s in parsed.streams}
    return all(
        s.name in expected
        and s.fingerprint == expected[s.name].fingerprint
        and s.first_trial_number == expected[s.name].first_trial_number
        for s in found
    )


def _carry_over(study: StudyRef, trial_ids: Mapping[int, int]) -> None:
    """Point the sampler caches in the study's attributes at its trials, exactly once.

    The rewrites are recorded before they are written: an import run again (after a failure)
    writes the recorded ones again rather than mapping the already mapped ids a second time.
    """
    storage, study_id = study.storage, study.study_id
    attrs = storage.get_study_system_attrs(study_id)
    recorded = attrs.get(_CARRIED_OVER)
    if isinstance(recorded, dict) and recorded.get("study_uid") == study.uid:
        changes = recorded["changes"]
    else:
        changes = carried_over(attrs, trial_ids)
        if not changes:
            return
        record: dict[str, Any] = {"study_uid": study.uid, "changes": changes}
        storage.set_study_system_attr(study_id, _CARRIED_OVER, record)
    for key, value in changes.items():
        storage.set_study_system_attr(study_id, key, value)


def _check_seal(
    sealer: Sealer, study_name: str, stream: ExportedStream, c: ExportedCheckpoint
) -> Checkpoint:
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


def _check_trials(study_name: str, parsed: Document, trials: Mapping[int, Any]) -> None:
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
