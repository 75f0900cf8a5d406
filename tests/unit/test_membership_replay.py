"""Replay-proof membership: epochs against genuine, replayed, reordered and stale datagrams.

The receiver here is the agent's pure path (ReplayGuard, then the map): the property is that a
replayed datagram, or an authentic one of an epoch that is over, never changes the map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pymosix.errors import AuthError
from pymosix.ids import NodeId
from pymosix.membership import ClusterMap, new_epoch
from pymosix.wire.envelope import Envelope, Kind, ReplayGuard

ME, B = NodeId(0x640B), NodeId(0x640C)
B_ADDR = "192.168.100.12"
T0_MS = 1_800_000_000_000


def fresh() -> ClusterMap:
    return ClusterMap(ME, "192.168.100.11", dead_after_s=3.0, now=0.0, replay_horizon_s=61.0)


def test_new_epochs_grow_with_the_start_time_and_fit_63_bits() -> None:
    a, b = new_epoch(T0_MS, 2**32 - 1), new_epoch(T0_MS + 1, 0)
    assert a < b < 2**63
    assert new_epoch(T0_MS, 1) != new_epoch(T0_MS, 2)


def test_a_bye_ends_only_its_epoch_and_old_hellos_never_bring_it_back() -> None:
    m = fresh()
    e1, e2 = new_epoch(T0_MS, 1), new_epoch(T0_MS + 5000, 1)
    m.heard(B, B_ADDR, e1, now=0.0)
    [ch] = m.left(B, B_ADDR, e1, now=1.0)
    assert ch.left == (B,)
    assert m.heard(B, B_ADDR, e1, now=1.5) == []  # a hello of the epoch that said bye
    [ch] = m.heard(B, B_ADDR, e2, now=5.0)  # restarted: a fresh epoch
    assert ch.joined == (B,)
    assert m.left(B, B_ADDR, e1, now=5.5) == []  # the old bye, replayed
    assert [(n.node_id, n.epoch) for n in m.peers()] == [(B, e2)]
    assert m.stale == 2


def test_a_restart_without_bye_supersedes_the_old_epoch() -> None:
    m = fresh()
    e1, e2 = new_epoch(T0_MS, 1), new_epoch(T0_MS + 1000, 1)
    m.heard(B, B_ADDR, e1, now=0.0)
    assert m.heard(B, B_ADDR, e2, now=1.0) == []  # same member, new life
    assert m.heard(B, B_ADDR, e1, now=1.1) == []
    assert m.left(B, B_ADDR, e1, now=1.2) == []
    assert [n.node_id for n in m.nodes()] == [ME, B]


def test_a_silent_node_may_come_back_in_its_epoch_but_never_an_older_one() -> None:
    m = fresh()
    e1, e2 = new_epoch(T0_MS, 1), new_epoch(T0_MS + 1000, 1)
    m.heard(B, B_ADDR, e1, now=0.0)
    m.heard(B, B_ADDR, e2, now=0.5)
    [ch] = m.tick(4.0)
    assert ch.left == (B,)
    assert m.heard(B, B_ADDR, e1, now=4.1) == []
    [ch] = m.heard(B, B_ADDR, e2, now=4.2)  # the cable is back
    assert ch.joined == (B,)


def test_ended_epochs_are_forgotten_after_the_horizon() -> None:
    m = fresh()
    e1 = new_epoch(T0_MS, 1)
    m.heard(B, B_ADDR, e1, now=0.0)
    m.left(B, B_ADDR, e1, now=1.0)
    m.tick(100.0)
    assert m._ended == {}


def test_other_kinds_are_admitted_only_in_the_current_epoch() -> None:
    m = fresh()
    e1, e2 = new_epoch(T0_MS, 1), new_epoch(T0_MS + 1000, 1)
    assert not m.admits(B, e1, now=0.0)  # not a member
    m.heard(B, B_ADDR, e1, now=0.0)
    assert m.admits(B, e1, now=0.1)
    m.heard(B, B_ADDR, e2, now=0.2)
    assert not m.admits(B, e1, now=0.3)
    assert m.admits(B, e2, now=0.3)
    assert not m.admits(ME, 0, now=0.3)


def test_static_nodes_follow_the_epochs_of_their_datagrams() -> None:
    m = fresh()
    m.add_static([(B, B_ADDR)], now=0.0)
    e1, e2 = new_epoch(T0_MS, 1), new_epoch(T0_MS + 1000, 1)
    assert m.admits(B, e1, now=0.0)
    assert m.admits(B, e2, now=0.1)
    assert not m.admits(B, e1, now=0.2)
    assert m.left(B, B_ADDR, e2, now=0.3) == []  # static: stays in the map, its epoch over
    assert not m.admits(B, e2, now=0.4)
    assert [n.node_id for n in m.nodes()] == [ME, B]


# --- property: replays and stale datagrams never change the map -------------------------------


@dataclass
class Sender:
    """Node B's lives: each an epoch, hellos with counting seqs, ending in a bye or a crash."""

    life: int = 0
    seq: int = 0
    start_ms: int = T0_MS
    epochs: list[int] = field(default_factory=lambda: [new_epoch(T0_MS, 7)])

    @property
    def epoch(self) -> int:
        return self.epochs[self.life]

    def datagram(self, kind: int, now_ms: int, epoch: int | None = None) -> Envelope:
        self.seq += 1
        return Envelope(kind, B, self.epoch if epoch is None else epoch, self.seq, now_ms, {})

    def restart(self, now_ms: int, rand: int) -> None:
        self.life += 1
        self.seq = 0
        self.epochs.append(new_epoch(now_ms, rand))


def snapshot(m: ClusterMap) -> tuple[object, ...]:
    return m.nodes()


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("hello"), st.integers(0, 0)),
        st.tuples(st.just("bye"), st.integers(0, 0)),
        st.tuples(st.just("crash"), st.integers(0, 2**20)),
        st.tuples(st.just("hold"), st.integers(0, 0)),
        st.tuples(st.just("release"), st.integers(0, 1000)),
        st.tuples(st.just("replay"), st.integers(0, 1000)),
        st.tuples(st.just("stale"), st.integers(0, 1000)),
        st.tuples(st.just("wait"), st.integers(1, 5000)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_replayed_and_stale_datagrams_never_change_the_map(
    actions: list[tuple[str, int]],
) -> None:
    m, guard, b = fresh(), ReplayGuard(max_skew_ms=30_000), Sender()
    now_ms = T0_MS
    delivered: list[Envelope] = []
    held: list[Envelope] = []
    #: Epochs the receiver has seen end (a bye delivered, or a later epoch delivered).
    over: set[int] = set()

    def deliver(env: Envelope) -> None:
        now = (now_ms - T0_MS) / 1000
        try:
            guard.check(env, now_ms)
        except AuthError:
            return
        delivered.append(env)
        if env.kind == Kind.HELLO:
            m.heard(B, B_ADDR, env.epoch, now)
        else:
            m.left(B, B_ADDR, env.epoch, now)
        over.update(e for e in b.epochs if e < env.epoch)
        if env.kind == Kind.BYE:
            over.add(env.epoch)

    for action, arg in actions:
        if action == "hello":
            deliver(b.datagram(Kind.HELLO, now_ms))
            assert m.get(B) is not None or b.epoch in over or any(e > b.epoch for e in over)
        elif action == "bye":
            deliver(b.datagram(Kind.BYE, now_ms))
            assert m.get(B) is None or m.get(B).epoch > b.epoch  # type: ignore[union-attr]
            now_ms += 10
            b.restart(now_ms, 0)
        elif action == "crash":
            now_ms += 10
            b.restart(now_ms, arg)
        elif action == "hold":
            held.append(b.datagram(Kind.HELLO, now_ms))
        elif action == "release" and held:
            env = held.pop(arg % len(held))
            before = snapshot(m)
            deliver(env)
            if env.epoch in over:
                assert snapshot(m) == before, "a late datagram of an epoch that is over"
        elif action == "replay" and delivered:
            before = snapshot(m)
            deliver(delivered[arg % len(delivered)])
            assert snapshot(m) == before, "a replay changed the map"
        elif action == "stale" and over:
            # Authentic, never seen here (captured elsewhere), of an epoch that is over.
            epochs = sorted(over)
            epoch = epochs[arg % len(epochs)]
            kind = Kind.HELLO if arg % 2 else Kind.BYE
            env = Envelope(kind, B, epoch, 10_000 + arg, now_ms - 10, {})
            before = snapshot(m)
            deliver(env)
            assert snapshot(m) == before, "a stale datagram changed the map"
        elif action == "wait":
            now_ms += arg
            m.tick((now_ms - T0_MS) / 1000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=20), st.integers(0, 2**20))
def test_a_fresh_epoch_always_gets_back_in(waits: list[int], rand: int) -> None:
    m, b = fresh(), Sender()
    now_ms = T0_MS
    for w in waits:
        m.heard(B, B_ADDR, b.epoch, (now_ms - T0_MS) / 1000)
        m.left(B, B_ADDR, b.epoch, (now_ms - T0_MS) / 1000)
        assert m.get(B) is None
        now_ms += w
        b.restart(now_ms, rand)
    m.heard(B, B_ADDR, b.epoch, (now_ms - T0_MS) / 1000)
    assert [(n.node_id, n.epoch) for n in m.peers()] == [(B, b.epoch)]
