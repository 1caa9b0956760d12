"""`python -m flows.cli ...`: the same as the `bulkscribe` command."""

import sys

from flows.cli import main

sys.exit(main())
