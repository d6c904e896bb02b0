"""``python -m metric_sim ...`` (and ``torchrun -m metric_sim ...``): the ``metric-sim`` command."""

from metric_sim.cli import main

raise SystemExit(main())
