from ebb.activator.main import main

raise SystemExit(main())
