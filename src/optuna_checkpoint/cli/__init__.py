"""``optuna-checkpoint``: inspect, verify, prune, fork and carry the checkpoints of studies.

The package holds no code, so importing one of its modules never runs another:

- :mod:`._main` defines the click group ``main`` (the console script's entry point) and its
  one list of verbs;
- each verb is one module (:mod:`._status`, :mod:`._prune`, :mod:`._verify`, :mod:`._fork`,
  :mod:`._transfer`) defining click commands with the shared options of :mod:`._common`, and
  printing with :mod:`._render`; a verb imports only those two, never another verb nor this
  package;
- the data comes from the tools (:mod:`optuna_checkpoint.tools._inspect`,
  :mod:`optuna_checkpoint.tools._verify`, :mod:`optuna_checkpoint.tools._fork`,
  :mod:`optuna_checkpoint.tools._transfer`) and the public API; the verbs only render it.

Exit codes: 0 when the report was made (and, for ``verify``, everything checked out); 1 when a
problem stopped it (no such study, a storage that cannot prune, a database that cannot be
reached) or ``verify`` found one; 2 for a usage error (click's own).
"""
