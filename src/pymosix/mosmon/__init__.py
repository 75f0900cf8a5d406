"""mosmon: the cluster's load at a glance, one bar per node, as openMosix's mosmon showed it."""
