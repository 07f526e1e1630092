"""Deterministic parallel optimization: where a trial stands, what it waits for, what it sees.

``CheckpointingSampler(sampler, deterministic_workers=K)`` makes the trial at logical position n
a pure function of the sampler's configuration, n, and the settled trials at positions up to
n - (2K - 1) (:mod:`optuna_checkpoint.study._positions`). :mod:`._schedule` gives each trial its
position and waits until that history is complete; :mod:`._liveness` tells which unfinished
trials a live process still runs; :mod:`._trial_states` gives each trial its own random streams.
"""
