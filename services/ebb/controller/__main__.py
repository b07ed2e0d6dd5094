from ebb.controller.main import main

raise SystemExit(main())
