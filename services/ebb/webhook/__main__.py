"""`python -m ebb.webhook`."""

from ebb.webhook.main import main

raise SystemExit(main())
