"""`python -m ebb.queue`."""

from ebb.queue.main import main

raise SystemExit(main())
