"""``python -m otel_blocksnoop``."""

import sys

from otel_blocksnoop.cli import main

sys.exit(main())
