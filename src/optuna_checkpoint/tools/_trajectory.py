"""Read a study back as the uninterrupted run would have recorded it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.study._positions import DETERMINISTIC_ATTR
from optuna_checkpoint.study._positions import logical_trajectory


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import Interruption


def uninterrupted_trials(
    study: Study, *, signing_key: str | bytes | None = None
) -> list[FrozenTrial]:
    """Return the study's trials without the interrupted attempts that were retried.

    These are the trials of the run that never stopped, in order: what a resumed study is
    guaranteed to match bit for bit. Trials keep their stored numbers; interrupted attempts are
    the FAIL trials that optuna-checkpoint hid from the sampler and retried. In a study run with
    ``deterministic_workers``, entry n is the trial at logical position n, whichever worker ran
    it, up to the first position not finished yet: the same list on every run.

    Args:
        study: A study that was optimized with a :class:`CheckpointingSampler`.
        signing_key: The key the study's rows are signed with, as given to its
            :class:`CheckpointingSampler`; defaults to the environment variable
            ``OPTUNA_CHECKPOINT_SIGNING_KEY``.

    Returns:
        Deep copies of the trials, in trial-number order.

    Raises:
        CorruptCheckpointError: A record of an interrupted trial fails its seal.
        SignatureError: A record is unsigned while a key is given, or signed while none is.
    """
    trials = study.get_trials(deepcopy=True)
    if not trials:
        return trials
    sealer = Sealer.from_option(signing_key)
    hidden = {i.trial_id for i in recorded_interruptions(study, trials[0], sealer)}
    if DETERMINISTIC_ATTR in study._storage.get_study_system_attrs(study._study_id):
        return logical_trajectory(trials, hidden)
    return [t for t in trials if t._trial_id not in hidden]


def recorded_interruptions(
    study: Study, first_trial: FrozenTrial, sealer: Sealer
) -> list[Interruption]:
    """Return the interrupted attempts recorded for ``study``, whose trial 0 is ``first_trial``.

    Each record's seal is checked with ``sealer`` first.
    """
    uid = study_uid(study._study_id, study.study_name, first_trial)
    store = store_for(study._storage)
    store.open_study(study._study_id, uid)
    return SealedRows(store, uid, sealer).interruptions()
