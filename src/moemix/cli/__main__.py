"""``python -m moemix.cli ...`` is the ``moemix`` command."""

import sys

from moemix.cli.main import main

sys.exit(main())
