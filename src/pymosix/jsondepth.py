"""How deeply a decoded JSON message nests, and the limit requests and stdio controls keep to.

Its own module, free of asyncio, so that the tools (mosrun starts on a busy CPU) import it cheaply.
"""

from __future__ import annotations

from typing import Any

#: Deepest nesting of arrays and objects in a request (real ones have 2 or 3).
MAX_DEPTH = 16


def json_depth(obj: Any) -> int:
    """How deeply arrays and objects nest in `obj` (counting stops past MAX_DEPTH)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack += [(v, d + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, d + 1) for v in item]
    return deepest
