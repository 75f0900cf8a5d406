"""A host's record of output sent home and not yet confirmed by mosrun (migration/outlog.py),
and home's side of it (checkpoint.Cursor with positions): after home's agent dies at any point,
mosrun ends with every byte once, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pymosix.migration.checkpoint import Cursor
from pymosix.migration.outlog import OutLog, positions, to_wire


def test_positions_from_the_wire_are_two_counts_or_nothing() -> None:
    assert positions([3, 4]) == {1: 3, 2: 4}
    assert to_wire({1: 3, 2: 4}) == [3, 4]
    for bad in (None, [1], [1, 2, 3], [-1, 0], [True, 0], ["1", 0], {"1": 2}, [1.5, 0]):
        assert positions(bad) is None, bad


def test_confirmed_frames_are_forgotten_the_rest_sent_again_trimmed() -> None:
    log = OutLog()
    log.start_at({1: 100, 2: 0}, keep=True)
    frames = [(1, b"abcd"), (2, b"xy"), (1, b"efgh")]
    for fd, data in frames:
        log.sent(fd, log.stamp(fd, len(data)), data)
    assert log.held == 10
    log.confirmed({1: 104, 2: 0})
    assert [d for _, _, d in log.unconfirmed] == [b"xy", b"efgh"]
    again, missing = log.resend_from({1: 106, 2: 2})
    assert again == [(1, 106, b"gh")]
    assert missing == 0
    assert log.held == 0
    assert not log.unconfirmed


def test_without_keeping_what_mosrun_lacks_is_counted_as_missing() -> None:
    log = OutLog(keep=False)
    log.sent(1, log.stamp(1, 5), b"12345")
    log.stamp(1, 3)  # queued, not sent: not missing, it goes on the next link
    assert log.resend_from({1: 2, 2: 0}) == ([], 3)


def test_a_job_taken_over_sends_first_what_mosrun_lacks_of_the_kept_frames() -> None:
    log = OutLog()
    kept = [(1, 10, b"abcdef"), (2, 0, b"ee"), (1, 16, b"gh")]
    again, missing = log.adopt(kept, {1: 13, 2: 2})
    assert again == [(1, 13, b"def"), (1, 16, b"gh")]
    assert missing == 0
    assert log.stamp(1, 4) == 18  # its next byte follows the last kept
    assert log.stamp(2, 1) == 2
    # A killed agent kept nothing: the stream goes on from mosrun's counts, nothing said.
    log = OutLog()
    assert log.adopt([], {1: 5, 2: 7}) == ([], 0)
    assert log.stamp(2, 3) == 7
    # Kept frames that begin past mosrun's count: the bytes between are lost, and counted.
    assert OutLog().adopt([(1, 20, b"zz")], {1: 15, 2: 0}) == ([(1, 20, b"zz")], 5)


def test_a_frame_of_one_fd_confirmed_behind_an_unconfirmed_one_of_the_other() -> None:
    log = OutLog(keep=True)
    log.sent(2, log.stamp(2, 2), b"ee")
    log.sent(1, log.stamp(1, 2), b"oo")
    log.confirmed({1: 2, 2: 0})
    assert list(log.unconfirmed) == [(2, 0, b"ee")]
    assert log.held == 2


@settings(max_examples=300, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.sampled_from([1, 2]), st.binary(min_size=1, max_size=30)),
        min_size=1,
        max_size=40,
    ),
    relayed=st.integers(min_value=0, max_value=40),
    acked=st.integers(min_value=0, max_value=40),
    cut=st.integers(min_value=0, max_value=30),
)
def test_home_dying_anywhere_loses_and_repeats_nothing(
    writes: list[tuple[int, bytes]], relayed: int, acked: int, cut: int
) -> None:
    """The host sends every write; home relays the first `relayed` frames to mosrun (the last
    one perhaps cut short: mosrun keeps whole frames), mosrun acked after `acked` of them; then
    home's agent dies. The next one starts from mosrun's counts and the host sends again."""
    host = OutLog()
    host.start_at({1: 0, 2: 0}, keep=True)
    sent = []
    for fd, data in writes:
        at = host.stamp(fd, len(data))
        host.sent(fd, at, data)
        sent.append((fd, at, data))
    home, mosrun = Cursor(), {1: bytearray(), 2: bytearray()}
    relayed = min(relayed, len(sent))
    for i, (fd, at, data) in enumerate(sent[:relayed]):
        if i == relayed - 1 and cut < len(data):
            break  # the dead agent's last frame, begun and not finished: mosrun drops it
        mosrun[fd] += home.take(fd, data, at)
        if i + 1 == min(acked, relayed):
            host.confirmed({fd: len(b) for fd, b in mosrun.items()})
    got = {fd: len(b) for fd, b in mosrun.items()}
    again, missing = host.resend_from(got)
    assert missing == 0
    home = Cursor()
    home.received(got)
    for fd, at, data in again:
        mosrun[fd] += home.take(fd, data, at)
    for fd in (1, 2):
        assert bytes(mosrun[fd]) == b"".join(d for f, d in writes if f == fd)


def test_a_cursor_with_positions_drops_repeats_and_steps_over_a_gap() -> None:
    c = Cursor()
    assert c.take(1, b"abc", 0) == b"abc"
    assert c.take(1, b"bcde", 1) == b"de"
    assert c.lacks(1, 5) == 0
    assert c.lacks(1, 8) == 3
    assert c.take(1, b"ij", 8) == b"ij"
    assert c.sent[1] == 10  # a position: mosrun is told of the 3 lost bytes
    assert c.next_pos() == [10, 0]
    c.received({1: 4, 2: 7})
    assert c.next_pos() == [4, 7]


def test_an_older_mosrun_says_no_count_the_next_frame_says_where_the_stream_stands() -> None:
    c = Cursor()
    c.received(None)
    assert c.lacks(1, 5000) == 0  # not a gap: nobody knows
    assert c.take(1, b"abc", 5000) == b"abc"
    assert c.take(1, b"cd", 5002) == b"d"  # from then on, positions as ever
    assert c.lacks(1, 5010) == 6
    assert c.take(2, b"e", 10) == b"e"


def test_forget_keeps_nothing_more() -> None:
    log = OutLog()
    log.sent(1, log.stamp(1, 3), b"abc")
    log.forget()
    log.sent(1, log.stamp(1, 3), b"def")
    assert not log.unconfirmed
    assert log.held == 0
