from metric_sim.cli import main

raise SystemExit(main())
