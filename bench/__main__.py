"""`python -m bench` (make bench): every benchmark in turn."""

from __future__ import annotations

import sys

from bench import balance, freeze_time, gossip_cost, stdio

for mod in (gossip_cost, freeze_time, balance, stdio):
    print(f"\n=== {mod.__name__} ===", flush=True)
    sys.argv = [mod.__name__]
    mod.main()
