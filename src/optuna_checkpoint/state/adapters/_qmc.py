"""State adapter for :class:`optuna.samplers.QMCSampler` (Sobol and Halton, scrambled or not).

In memory the sampler holds its scrambling seed (drawn from OS entropy at construction when none
is given) and an independent sampler for the first trial and for parameters outside the
relative search space.

Its position in the sequence lives in the study: every ``sample_relative`` reads the study
system attribute ``qmc:<hash of type, seed and search space>``, adds one, and writes it back
before the trial's parameters are even stored. A trial interrupted after that has moved the
sequence on, and its retry would take the next point instead of the one the uninterrupted run
took. So the adapter captures these counters with the rest of the state and, on resume, writes
them back: the sequence continues from where it stood after the restored trial.

Writing back is right only while nobody else draws from the sequence. Several workers share one
study's counter (that is how QMC hands them distinct points), and rolling it back would make
them propose points again that another worker has already evaluated. The counters are
therefore written back only when this process's checkpoint stream is the study's only one;
with several streams the retry continues the sequence where it stands, as plain Optuna does,
and the resumed worker skips the points its interrupted trials drew.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import QMCSampler
from optuna.storages import BaseStorage

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._registry import adapter_of_held
from optuna_checkpoint.state.adapters._registry import register


_logger = get_logger(__name__)

SEED = "seed"  # QMCSampler._seed
INDEPENDENT_ADAPTER = "independent_adapter"  # the independent sampler's adapter name
INDEPENDENT_SAMPLER = "independent_sampler"  # QMCSampler._independent_sampler
SEQUENCE_POSITIONS = "sequence_positions"  # the study's qmc:* attributes; None if not seen

COUNTER_PREFIX = "qmc:"  # QMCSampler._find_sample_id's study system attribute
_NOT_DRAWN = -1  # what QMCSampler reads for a missing counter: the next sample id is 0


@register(QMCSampler)
class QMCSamplerAdapter(StateAdapter):
    """Captures the scrambling seed, the independent sampler and the sequence positions."""

    name = "QMCSampler"
    # State, not configuration: unseeded, every construction draws another. A changed seed
    # still shows in the fingerprint through the default independent sampler's RNG (not through
    # an independent_sampler passed explicitly: then the checkpoint's seed is used).
    CACHE_ATTRS = ("_seed",)
    sampler: QMCSampler

    def __init__(self, sampler: QMCSampler) -> None:
        super().__init__(sampler)
        self.independent = adapter_of_held(
            sampler._independent_sampler, holder="QMCSampler", role="independent_sampler"
        )
        self.held = (self.independent,)
        self._storage: BaseStorage | None = None
        self._study_id = -1
        self._sole_stream = False

    def bind_study(self, storage: BaseStorage, study_id: int, *, sole_stream: bool) -> None:
        """Read the sequence positions from this study; write them back if ``sole_stream``."""
        self._storage, self._study_id, self._sole_stream = storage, study_id, sole_stream
        super().bind_study(storage, study_id, sole_stream=sole_stream)

    def state_dict(self) -> dict[str, Any]:
        """Capture the seed, the independent sampler and the study's sequence positions."""
        return {
            SEED: int(self.sampler._seed),
            INDEPENDENT_ADAPTER: self.independent.name,
            INDEPENDENT_SAMPLER: self.independent.state_dict(),
            SEQUENCE_POSITIONS: None if self._storage is None else self._positions(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and the independent sampler, and rewind the sequence positions."""
        written_by = self.require(state_dict, INDEPENDENT_ADAPTER)
        if written_by != self.independent.name:
            raise CorruptCheckpointError(
                f"the checkpoint holds the state of a {written_by} independent sampler, but "
                f"this QMCSampler's is captured by {self.independent.name}"
            )
        positions = self.require(state_dict, SEQUENCE_POSITIONS)
        if positions is not None and not (
            isinstance(positions, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in positions.values())
        ):
            raise CorruptCheckpointError(f"QMC sequence positions are malformed: {positions!r}")
        self.sampler._seed = int(self.require(state_dict, SEED))
        self.independent.load_state_dict(self.require(state_dict, INDEPENDENT_SAMPLER))
        if positions is not None:
            self._rewind(positions)

    def _positions(self) -> dict[str, int]:
        assert self._storage is not None
        attrs = self._storage.get_study_system_attrs(self._study_id)
        return {k: int(v) for k, v in attrs.items() if k.startswith(COUNTER_PREFIX)}

    def _rewind(self, positions: dict[str, int]) -> None:
        """Set every sequence position to the captured one (not yet drawn, if none was)."""
        if self._storage is None or not self._sole_stream:
            return
        for key, current in self._positions().items():
            captured = positions.get(key, _NOT_DRAWN)
            if current != captured:
                # Idempotent, so a resume cut short and run again sets the same values.
                _logger.info(
                    "QMC sequence %s: back from sample %d to %d, drawn by an interrupted trial.",
                    key[len(COUNTER_PREFIX) :][:12],
                    current,
                    captured,
                )
                self._storage.set_study_system_attr(self._study_id, key, captured)
