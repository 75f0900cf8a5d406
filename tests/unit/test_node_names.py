"""Nodes named every way a tool takes them, ranges for -j, one way of printing, map numbers kept,
and mosrun's placement check; names resolve against fake maps and a fake host table."""

from __future__ import annotations

import pytest

from pymosix.cli.mosrun import Options, parse_args, placement_problem
from pymosix.errors import ConfigError, PymosixError
from pymosix.ids import NodeId, describe_node, expand_node_list, resolve_node
from pymosix.mapfile import parse_numbered_map
from pymosix.membership import ClusterMap

#: The agent's `map` rows for a static map "1 192.168.100.11 2" plus a discovered node.
ROWS = [
    {"node_id": 0x640B, "address": "192.168.100.11", "number": 1, "self": True},
    {"node_id": 0x640C, "address": "192.168.100.12", "number": 2, "self": False},
    {"node_id": 0x6420, "address": "192.168.100.32", "number": None, "self": False},
]
HOSTS = {"alpha": ["10.1.2.3"], "beta.lab": ["172.17.0.1", "192.168.100.12"]}


def lookup(name: str) -> list[str]:
    return HOSTS.get(name, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0x640c", 0x640C, id="hex"),
        pytest.param("0X640C", 0x640C, id="hex-upper"),
        pytest.param("25612", 25612, id="decimal"),
        pytest.param("2", 0x640C, id="map-number"),
        pytest.param("3", 3, id="number-not-in-map-is-a-decimal-id"),
        pytest.param("192.168.100.32", 0x6420, id="ip"),
        pytest.param("alpha", 0x0203, id="hostname"),
        pytest.param("beta.lab", 0x640C, id="hostname-address-in-the-map-first"),
        pytest.param("home", "home", id="home"),
        pytest.param(" Home ", "home", id="home-spaced"),
    ],
)
def test_every_name_form(text: str, expected: object) -> None:
    assert resolve_node(text, ROWS, lookup) == expected


@pytest.mark.parametrize("bad", ["", "nosuchhost", "0xzz", "65536", "0", "1.2.3.999"])
def test_names_that_name_nothing_are_one_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not|out of range|empty"):
        resolve_node(bad, ROWS, lookup)


def test_ranges_and_lists() -> None:
    assert expand_node_list("1-3,7") == ["1", "2", "3", "7"]
    assert expand_node_list("0x640b-0x640d") == ["0x640b", "0x640c", "0x640d"]
    assert expand_node_list("node-a,10.0.0.1,") == ["node-a", "10.0.0.1"]
    with pytest.raises(ValueError, match="must go up"):
        expand_node_list("5-2")


def test_ids_print_one_way() -> None:
    assert describe_node(25611) == "0x640b (#25611)"


def test_a_maps_numbers_are_kept_in_the_cluster_map() -> None:
    numbered = parse_numbered_map("1 192.168.100.11 2\n10 192.168.100.40 1\n")
    assert numbered == [
        (1, 0x640B, "192.168.100.11"),
        (2, 0x640C, "192.168.100.12"),
        (10, 0x6428, "192.168.100.40"),
    ]
    m = ClusterMap(NodeId(0x640B), "192.168.100.11", dead_after_s=3.0)
    m.add_static([(n, a) for _, n, a in numbered], 0.0, {n: k for k, n, _ in numbered})
    assert [(e.node_id, e.number) for e in m.nodes()] == [(0x640B, 1), (0x640C, 2), (0x6428, 10)]
    m.heard(NodeId(0x640C), "192.168.100.12", epoch=5, now=1.0)
    entry = m.get(NodeId(0x640C))
    assert entry is not None
    assert entry.number == 2


def test_a_node_number_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"map:2: node number 2 .* is already 192\.168\.100\.12"):
        parse_numbered_map("1 192.168.100.11 2\n2 192.168.100.50 1\n")


def test_mosrun_resolves_every_form_and_ranges() -> None:
    def resolve(t: str) -> object:
        return resolve_node(t, ROWS, lookup)

    assert parse_args(["-2", "cmd"], resolve).where == 0x640C  # type: ignore[arg-type]
    assert parse_args(["-alpha", "cmd"], resolve).where == 0x0203  # type: ignore[arg-type]
    o = parse_args(["-j1-2,0x6420", "cmd"], resolve)  # type: ignore[arg-type]
    assert o.nodes == [0x640B, 0x640C, 0x6420]


@pytest.mark.parametrize(
    ("args", "hints"),
    [
        pytest.param(["-c", "cmd"], ["-c"], id="cpu"),
        pytest.param(["-i", "-h", "cmd"], ["-i"], id="io-home"),
        pytest.param(
            ["-n", "-s", "-f", "-e", "-E", "-r", "-R", "cmd"],
            ["-n", "-s", "-f", "-e", "-E", "-r", "-R"],
            id="decay-and-others",
        ),
        pytest.param(["-t", "5", "-d4", "cmd"], ["-t5", "-d4"], id="valued"),
    ],
)
def test_job_kind_hints_are_accepted(args: list[str], hints: list[str]) -> None:
    o = parse_args(args)
    assert o.hints == hints
    assert o.argv == ["cmd"]


def test_a_valued_hint_needs_its_number() -> None:
    with pytest.raises(PymosixError, match="-t takes a whole number"):
        parse_args(["-t", "cmd"])


LOADS = [
    {"node_id": 0x640B, "up": True, "self": True},
    {"node_id": 0x640C, "up": True, "self": False},
    {"node_id": 0x640D, "up": False, "self": False},
]


@pytest.mark.parametrize(
    ("where", "nodes", "problem"),
    [
        pytest.param(0x640C, None, None, id="up"),
        pytest.param(0x640B, None, None, id="self"),
        pytest.param(0x9999, None, "0x9999 (#39321) is not in this node's map", id="unknown"),
        pytest.param(0x640D, None, "unreachable", id="down"),
        pytest.param(None, [0x640D, 0x640C], None, id="list-one-up"),
        pytest.param(None, [0x640D], "unreachable", id="list-none-up"),
        pytest.param(None, [0x640C, 0x9999], "not in this node's map", id="list-unknown"),
    ],
)
def test_placement_problem(where: int | None, nodes: list[int] | None, problem: str | None) -> None:
    got = placement_problem(Options(argv=["x"], where=where, nodes=nodes), LOADS)
    if problem is None:
        assert got is None
    else:
        assert got is not None
        assert problem in got
