"""``python -m iii`` runs the ``iii`` command."""

import sys

from iii.cli.main import main

sys.exit(main())
