from ebb.autoscaler.main import main

raise SystemExit(main())
