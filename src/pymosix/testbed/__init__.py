"""The test bed: several pymosix nodes on one machine, each a network namespace with its own
CPU(s), on one bridge that has no address on the host, so nothing leaves the machine."""

from pymosix.testbed.bed import BedNode, TestBed, bed_names, down

__all__ = ["BedNode", "TestBed", "bed_names", "down"]
