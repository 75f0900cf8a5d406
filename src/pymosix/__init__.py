"""pymosix: openMosix's single-system-image experience in user space, with CRIU."""

from pymosix.errors import PymosixError
from pymosix.ids import NodeId

__all__ = ["NodeId", "PymosixError", "__version__"]
__version__ = "0.1.0"
