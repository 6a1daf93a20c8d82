from __future__ import annotations

import sys
from pathlib import Path

# streams.py (the SSE stream holder) is shared with bench/bench_autoscale.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
