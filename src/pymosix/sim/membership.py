"""Who knows whom in the simulator: multicast hellos, joins, leaves and a partition, at O(1) a hello.

A hello reaches every live node on the sender's side of a partition at once, so what a node has
heard is shared by all nodes that were on the same side: one vector `heard[group][node]` per
side, not one map per node. A node's group is the side it was on during the partition (0 if
none); after the partition heals, hellos reach every group again, so each group hears the other
side's nodes only at their next hello, as real maps do. A node that joined at `since` knows only
hellos sent after it joined. Node Y knows X when Y's group heard X at or after Y joined, and
less than dead_after ago (stretched with the map, pymosix.discovery).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymosix.discovery import dead_after, hello_interval

_NEVER = float("-inf")


@dataclass(slots=True)
class Membership:
    """The hello model for n nodes; `budget` None is the fixed-interval scheme (every 0.5 s)."""

    n: int
    base_hello_s: float = 0.5
    base_dead_s: float = 3.0
    budget: int | None = 32
    heard: list[list[float]] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    side: list[int] = field(default_factory=list)
    since: list[float] = field(default_factory=list)
    alive: list[bool] = field(default_factory=list)
    partitioned: bool = False
    #: Live nodes per group's view, refreshed by `recount` (the map size each node scales by).
    map_size: list[int] = field(default_factory=list)
    #: Live nodes on each side (on side 0 when not partitioned).
    live: list[int] = field(default_factory=list)
    _dead: list[float] = field(default_factory=list)
    hellos_sent: int = 0
    hellos_received: int = 0

    def __post_init__(self) -> None:
        # The run starts on a converged cluster: every node has heard every other at time 0.
        self.heard = [[0.0] * self.n]
        self.group = [0] * self.n
        self.side = [0] * self.n
        self.since = [_NEVER] * self.n
        self.alive = [True] * self.n
        self.map_size = [self.n]
        self.live = [self.n, 0]
        self._scale_dead()

    # --- the scheme --------------------------------------------------------------------------

    def interval(self, g: int) -> float:
        if self.budget is None:
            return self.base_hello_s
        return hello_interval(self.map_size[g], self.base_hello_s, self.budget)

    def dead_after(self, g: int) -> float:
        return self._dead[g]

    def _scale_dead(self) -> None:
        self._dead = [
            self.base_dead_s
            if self.budget is None
            else dead_after(m, self.base_hello_s, self.base_dead_s, self.budget)
            for m in self.map_size
        ]

    # --- events ------------------------------------------------------------------------------

    def hello(self, x: int, now: float) -> float:
        """Node x multicasts a hello; returns when it sends the next one."""
        self.hellos_sent += 1
        for g in self._reach(x):
            self.heard[g][x] = now
        side = self.side[x] if self.partitioned else 0
        self.hellos_received += self.live[side] - (1 if self.alive[x] else 0)
        return now + self.interval(self.group[x])

    def bye(self, x: int) -> None:
        """A clean leave: every group that can hear x forgets it at once."""
        for g in self._reach(x):
            self.heard[g][x] = _NEVER
        self._set_alive(x, False)

    def crash(self, x: int) -> None:
        self._set_alive(x, False)

    def absent(self, x: int) -> None:
        """x is not up when the run starts: nobody has heard of it."""
        for vec in self.heard:
            vec[x] = _NEVER
        self._set_alive(x, False)

    def join(self, x: int, now: float) -> None:
        self._set_alive(x, True)
        self.since[x] = now

    def split(self, side_one: set[int]) -> None:
        """A partition (one a run): side_one cannot hear the rest; its group starts from what
        all had heard."""
        if len(self.heard) > 1:
            raise ValueError("the model has one partition per run")
        self.heard.append(list(self.heard[0]))
        self.map_size.append(self.map_size[0])
        self._scale_dead()
        for x in side_one:
            self.side[x] = 1
            self.group[x] = 1
        self.partitioned = True
        self._recount_live()

    def heal(self) -> None:
        self.partitioned = False
        self._recount_live()

    def recount(self, now: float) -> None:
        """Refresh each group's map size (what the interval scales by); O(n) per group."""
        for g, vec in enumerate(self.heard):
            limit = now - self._dead[g]
            self.map_size[g] = max(1, sum(1 for t in vec if t >= limit))
        self._scale_dead()

    def _set_alive(self, x: int, alive: bool) -> None:
        if self.alive[x] != alive:
            self.alive[x] = alive
            self.live[self.side[x] if self.partitioned else 0] += 1 if alive else -1

    def _recount_live(self) -> None:
        self.live = [0, 0]
        for x in range(self.n):
            if self.alive[x]:
                self.live[self.side[x] if self.partitioned else 0] += 1

    # --- queries -----------------------------------------------------------------------------

    def knows(self, y: int, x: int, now: float) -> bool:
        """Whether x is in y's map."""
        if x == y:
            return True
        g = self.group[y]
        t = self.heard[g][x]
        return t >= self.since[y] and now - t <= self.dead_after(g)

    def reachable(self, x: int, y: int) -> bool:
        """Whether a datagram from x gets to y (y alive, same side of any partition)."""
        return self.alive[y] and self._same_side(x, y)

    def _same_side(self, x: int, y: int) -> bool:
        return not self.partitioned or self.side[x] == self.side[y]

    def _reach(self, x: int) -> range:
        """The groups a hello of x reaches: all, or during the partition its side's only."""
        if not self.partitioned:
            return range(len(self.heard))
        return range(self.side[x], self.side[x] + 1)
