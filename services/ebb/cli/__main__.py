"""`python -m ebb.cli` runs the `ebb` command."""

import sys

from ebb.cli.main import main

sys.exit(main())
