"""One mode per study: every worker of a deterministic study must be configured alike."""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.attach._attacher import refuse_trial
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.state._fingerprint import comparable
from optuna_checkpoint.state._fingerprint import digest
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.study._positions import DETERMINISTIC_ATTR


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


def check_study_mode(
    study: Study, trial: FrozenTrial, workers: int | None, fingerprint: Any, sealer: Sealer
) -> None:
    """Record the study's deterministic configuration, or check this worker's against it.

    The first worker of a deterministic study records K and its sampler's fingerprint in the
    study's system attributes; a worker with another K, another sampler configuration, or
    without ``deterministic_workers`` is refused, since its trials would not be those of the
    deterministic run. So is ``trial``, which the worker had just created: it is closed at once.

    Args:
        study: The study.
        trial: The trial the worker had just created.
        workers: This worker's ``deterministic_workers``, or ``None``.
        fingerprint: Its sampler's configuration.
        sealer: Seals the row of a refused trial (the sampler's, with its signing key).

    Raises:
        ConfigMismatchError: This worker does not match the study's configuration, or Optuna's
            heartbeat is enabled on the storage.
    """
    try:
        _check_study_mode(study, workers, fingerprint)
    except ConfigMismatchError:
        reason = "refused: the worker does not match the study's mode"
        refuse_trial(study, trial, reason, sealer)
        raise


def _check_study_mode(study: Study, workers: int | None, fingerprint: Any) -> None:
    storage, study_id = study._storage, study._study_id
    recorded = storage.get_study_system_attrs(study_id).get(DETERMINISTIC_ATTR)
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    if workers is not None and callable(get_interval) and get_interval():
        # Optuna would fail a dead worker's trial as an ordinary FAIL, which every other worker
        # would then take for the trial's genuine result.
        raise ConfigMismatchError(
            "deterministic_workers finds dead workers by itself, and Optuna's heartbeat would "
            "record their trials as genuine failures: create the storage without "
            "heartbeat_interval (the leases' grace_period and heartbeat_interval are arguments "
            "of CheckpointingSampler)"
        )
    if workers is None:
        if recorded is not None:
            raise ConfigMismatchError(
                f"study {study.study_name!r} runs in deterministic parallel mode with "
                f"deterministic_workers={recorded['workers']}; create this worker's sampler "
                f"with CheckpointingSampler(..., deterministic_workers={recorded['workers']})"
            )
        return
    # The comparable form: the same digest whichever way the fingerprint records seeds.
    mine: dict[str, Any] = {"workers": workers, "sampler": digest(comparable(fingerprint))}
    if recorded is None:
        storage.set_study_system_attr(study_id, DETERMINISTIC_ATTR, mine)
    elif recorded["workers"] != workers:
        raise ConfigMismatchError(
            f"study {study.study_name!r} runs with deterministic_workers="
            f"{recorded['workers']}, this worker with {workers}: every worker of a "
            "deterministic study must use the same number"
        )
    elif recorded["sampler"] != mine["sampler"]:
        raise ConfigMismatchError(
            f"this worker's sampler is configured differently from the one study "
            f"{study.study_name!r} was started with: every worker of a deterministic study "
            "must construct the same sampler with the same seed"
        )
