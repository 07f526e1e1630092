"""The objective's own checkpoint: resume inside a trial that a kill cut off.

A trial cut off by a kill is retried as a new trial with the same parameters. With
``trial_checkpoint`` the objective saves its state as it goes (an epoch count, weights, its
random generators), and the retry loads the newest save and continues from there instead of
from the first step. A file or directory that a framework writes (``torch.save``, Lightning,
Hugging Face) is saved with the state through ``path=``; with an Optuna artifact store, the bulk
lives there and the database keeps a sealed reference. How the state is kept is in
:mod:`optuna_checkpoint.record._trial_states` and :mod:`optuna_checkpoint.record._trial_artifacts`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
import shutil
import tarfile
import tempfile
from typing import TYPE_CHECKING
from typing import Any

from optuna.trial import Trial

from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.record._trial_states import SavedState


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from optuna_checkpoint.attach._attachment import Attachment

_KIND = "kind"
_DATA = "data"
_FILE = "file"
_DIRECTORY = "directory"


def _attachment(sampler: CheckpointingSampler, trial: Trial) -> Attachment:
    """The attachment through which ``trial``'s objective keeps its state.

    Raises:
        CheckpointError: The sampler has not started a trial of ``trial``'s study.
    """
    attachment = sampler._attachment
    study = trial.study
    if (
        attachment is None
        or attachment.superseded
        or not attachment.of(study._storage, study._study_id)
    ):
        raise CheckpointError(
            "trial_checkpoint works in the objective of a trial that the study's "
            "CheckpointingSampler has started (in study.optimize, or after study.ask); this "
            "sampler is not attached to the trial's study."
        )
    return attachment


class TrialCheckpoint:
    """The saved state of one logical trial, shared by all of its attempts.

    Get it with :func:`trial_checkpoint`. The retry of an attempt cut off by a kill is a new
    Optuna trial; it finds here what the attempts before it saved last.
    """

    def __init__(
        self,
        trial: Trial,
        sampler: CheckpointingSampler,
        artifact_store: ArtifactStore | None = None,
    ) -> None:
        self._trial = trial
        self._sampler = sampler
        self._artifact_store = artifact_store

    def __repr__(self) -> str:
        return f"TrialCheckpoint(trial number {self._trial.number})"

    def load(self, *, path: str | os.PathLike[str] | None = None) -> Any:
        """Return what an earlier attempt of this logical trial saved last, or ``None``.

        ``None`` on the trial's first attempt. On a retry, the first call also reports again,
        through Optuna's storage API, the intermediate values that attempt had reported when it
        saved, so the retry's intermediate values (and the pruner's decisions) are those of the
        uninterrupted run. Later calls return the same state again, as a fresh copy. Call it
        before the attempt's first :meth:`save`: once this attempt has saved, the earlier state
        is replaced and ``load`` returns ``None``.

        Nothing in the database is executed: the state is decoded by the safe codec, after its
        seal (and, in an artifact store, its digest) is checked.

        Args:
            path: Where to put back the file or directory saved with the state
                (``save(..., path=...)``), replacing what is there. Untouched when nothing was
                saved.

        Raises:
            CorruptCheckpointError: The saved state fails its seal or cannot be decoded, or its
                artifact is missing or altered.
            SignatureError: The seal cannot be checked with the sampler's signing key.
            CheckpointError: ``path`` is given but no file or directory was saved, or the
                state is in an artifact store and this checkpoint was given none.
        """
        attachment = _attachment(self._sampler, self._trial)
        saved, first = self._sampler._trial_states.load(
            attachment, self._trial._trial_id, self._artifact_store
        )
        if saved is None:
            return None
        if path is not None:
            if saved.path is None:
                raise CheckpointError(
                    f"no file or directory was saved for trial {self._trial.number}: save it "
                    "with save(state, path=...) to have load(path=...) put it back."
                )
            _unpack_path(saved.path, Path(path))
        if first:
            self._report_again(saved)
            return saved.state  # decoded for this call: no copy of it is kept
        return saved.fresh_state()

    def save(self, state: Any, *, path: str | os.PathLike[str] | None = None) -> None:
        """Replace this logical trial's saved state, atomically.

        A kill at any instant leaves either the previous state or this one for the retry. The
        intermediate values reported so far are saved with it. ``state`` may hold dicts with
        string keys, lists, tuples, strings, integers, floats (kept bit for bit), booleans,
        ``None``, bytes and numpy arrays of dtype bool, uint8, uint32, uint64, int32, int64 or
        float64.

        Args:
            state: The objective's state.
            path: A file or directory to save with it (a framework's checkpoint: weights,
                optimizer state), read now; :meth:`load` puts it back.

        Raises:
            TypeError: ``state`` holds a value that cannot be stored.
            FileNotFoundError: ``path`` does not exist.
            CheckpointError: ``state`` is larger than the storage takes (the message gives the
                sizes).
        """
        attachment = _attachment(self._sampler, self._trial)
        trial_id = self._trial._trial_id
        packed = None if path is None else _pack_path(Path(path))
        reported = self._trial.storage.get_trial(trial_id).intermediate_values
        self._sampler._trial_states.save(
            attachment,
            trial_id,
            state,
            reported,
            path=packed,
            artifact_store=self._artifact_store,
        )

    def _report_again(self, saved: SavedState) -> None:
        reported = self._trial.storage.get_trial(self._trial._trial_id).intermediate_values
        for step, value in sorted(saved.intermediate_values.items()):
            if step not in reported:
                self._trial.report(value, step)


def _pack_path(path: Path) -> dict[str, Any]:
    """A file's bytes, or a directory as an uncompressed tar archive."""
    if path.is_file():
        return {_KIND: _FILE, _DATA: path.read_bytes()}
    if not path.is_dir():
        raise FileNotFoundError(f"no file or directory at {str(path)!r} to save")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for child in sorted(path.iterdir()):
            archive.add(child, arcname=child.name)
    return {_KIND: _DIRECTORY, _DATA: buffer.getvalue()}


def _unpack_path(packed: dict[str, Any], path: Path) -> None:
    """Put a saved file or directory at ``path``, replacing what is there.

    A file takes its place with one rename. A directory's archive is extracted beside it with
    tarfile's ``data`` filter (nothing outside it, no links out, no devices), then replaces the
    old directory; a kill in between leaves the saved state, which the next attempt restores.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if packed[_KIND] == _FILE:
            (staging / "file").write_bytes(packed[_DATA])
            os.replace(staging / "file", path)
            return
        with tarfile.open(fileobj=io.BytesIO(packed[_DATA]), mode="r") as archive:
            archive.extractall(staging / "dir", filter="data")
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(staging / "dir", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def trial_checkpoint(
    trial: Trial, *, artifact_store: ArtifactStore | None = None
) -> TrialCheckpoint:
    """Return the checkpoint of ``trial``'s logical trial, to save and load the objective's state.

    Every attempt of a logical trial gets the same checkpoint: a retry of an attempt that a
    kill cut off loads what that attempt saved last, and continues from there. The study's
    sampler must be a :class:`~optuna_checkpoint.CheckpointingSampler`; the state lives in the
    study's own database (or, with ``artifact_store``, in that store, the database keeping a
    sealed reference and digest), and is deleted when the trial finishes.

    Example:

        .. code-block:: python

            def objective(trial):
                lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
                ckpt = trial_checkpoint(trial)
                state = ckpt.load()  # None on the first attempt
                start, w = (0, init()) if state is None else (state["epoch"], state["w"])
                for epoch in range(start, 10):
                    w, loss = train_one_epoch(w, lr)
                    trial.report(loss, epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                    ckpt.save({"epoch": epoch + 1, "w": w})
                return loss

    Args:
        trial: The trial the objective was given.
        artifact_store: An Optuna artifact store (``FileSystemArtifactStore``,
            ``Boto3ArtifactStore``, ``GCSArtifactStore``) for large states such as model
            weights. Every attempt must be given the same store.

    Raises:
        TypeError: ``trial`` is not a running :class:`optuna.trial.Trial`.
        CheckpointError: The study's sampler is not a ``CheckpointingSampler``, or its storage
            keeps no trial states (``JournalStorage``).
    """
    if not isinstance(trial, Trial):
        raise TypeError(
            "trial_checkpoint takes the optuna.trial.Trial an objective is given, got "
            f"{type(trial).__name__}"
        )
    sampler = trial.study.sampler
    if not isinstance(sampler, CheckpointingSampler):
        raise CheckpointError(
            f"trial_checkpoint needs the study's sampler to be a CheckpointingSampler, but it "
            f"is {type(sampler).__name__}: wrap it, e.g. "
            f"sampler=CheckpointingSampler({type(sampler).__name__}(seed=...))."
        )
    store = _attachment(sampler, trial).store
    if store.trial_states_unsupported is not None:
        raise CheckpointError(store.trial_states_unsupported)
    return TrialCheckpoint(trial, sampler, artifact_store)
