"""``python -m flight_md`` is the ``flight-md`` command."""

import sys

from flight_md.cli import main

sys.exit(main())
