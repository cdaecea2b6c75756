"""``python -m sim --seeds N [--seed S] [--first F] [--json] [--workers W]`` (SPEC 8.4), or
``python -m sim --fuzz [--examples N]`` (the parsers under hypothesis).

Runs N fault schedules (seeds 0..N-1, or the one seed S), in W worker processes, and prints
the tally: schedules, faults by kind, accepted, answered, lost, duplicated, stranded and
violations. A failing seed prints its one-line reproduction and its trace. Exit 0 only with
zero lost, duplicated, stranded and violations; 2 for a bad argument.
"""

from sim.cli import main

raise SystemExit(main())
