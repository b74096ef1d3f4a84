"""pytest-benchmark suites (collected only when asked: ``pytest bench/ --benchmark-only``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
