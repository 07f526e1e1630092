"""``optuna-checkpoint-demo``: kill a study with real signals and show that it resumes exactly.

The demo runs one small optimization script three times, each in child processes on its own
SQLite file. Each trial of the script trains a small numpy model in ten steps, reports each step
to a ``MedianPruner`` and, with ``CheckpointingSampler``, saves its state after each step with
``trial_checkpoint``:

1. *reference*: with ``CheckpointingSampler(TPESampler(seed=S))``, never interrupted;
2. *checkpointed*: the same script, killed up to K times at random instants (SIGKILL, SIGTERM
   and SIGINT in turn; a kill due after the run finished is not sent) and run again after each
   kill until N trials are finished (COMPLETE or PRUNED); the retry of a trial cut off
   mid-training resumes at its last saved step, and the demo says so as it happens;
3. *unwrapped*: the control, the plain ``TPESampler(seed=S)`` killed in the same way; without
   the wrapper there is no ``trial_checkpoint``, and Optuna does not retry a cut-off trial.

It then compares the trajectories logical trial by logical trial (a trial's place in the run
that was never interrupted), bit for bit (``float.hex``), intermediate values included, counts
from the workers' step logs the training steps each killed run redid (at most one per kill with
``trial_checkpoint``), and exits with 0 if the checkpointed run is identical to the reference
and redid at most one step per kill, 1 otherwise. "Trial N" always means the number Optuna
stored and logged.

The child processes run ``python -m optuna_checkpoint.demo`` with the hidden ``--worker``
option, which is an ordinary user script: it opens its study with ``load_if_exists=True`` and
optimizes until N trials are finished, so running it again after a kill continues the study.

The modules, each importing only those listed before it (and the library's public names):

- :mod:`._worker`: the user's script, run in the child processes;
- :mod:`._run`: one run: starting its workers, killing them, following what they print,
  reading its study and step log back;
- :mod:`._compare`: comparing two trajectories bit for bit, saying why they differ, counting
  the steps redone;
- :mod:`._table`: the side-by-side table of the two trajectories;
- :mod:`._session`: the three runs, their table and the verdict;
- :mod:`._cli`: the command line, ``main``.
"""
