"""``pymosix testbed``: a cluster of network namespaces on this machine (DESIGN.md §4).

up --nodes N         make node1..nodeN and start their agents
exec [--user NAME] NODE -- CMD
                     run CMD inside a node (as NAME), with the tools pointed at its agent
status               what is up, and whether each agent answers
agent start|stop|kill NODE   one node's agent (stop announces the leave; kill is a crash)
log NODE             a node's agent log
down                 remove everything the bed made
"""

from __future__ import annotations

import argparse
import os
import sys

from pymosix.cli._common import print_json
from pymosix.testbed.bed import TestBed, bed_names, down


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pymosix testbed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make the bed and start the agents")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=1)
    up.add_argument(
        "--agents",
        default="all",
        help="which agents to start: all, none, or a list like node1,node3",
    )
    up.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra argument for every agent (repeatable)",
    )
    ex = sub.add_parser("exec", help="run a command inside a node")
    ex.add_argument("--user", "-u", help="run it as this user (default: root)")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    st = sub.add_parser("status", help="show the bed")
    st.add_argument("--json", action="store_true")
    ag = sub.add_parser("agent", help="start, stop or kill one node's agent")
    ag.add_argument("action", choices=["start", "stop", "kill"])
    ag.add_argument("node")
    lg = sub.add_parser("log", help="print a node's agent log")
    lg.add_argument("node")
    dn = sub.add_parser("down", help="remove the bed")
    dn.add_argument(
        "--all", action="store_true", help="every bed on this machine, leftovers included"
    )
    for sp in (up, ex, st, ag, lg, dn):
        sp.add_argument(
            "--name",
            default=os.environ.get("PYMOSIX_TESTBED", "pymosix"),
            help="bed name (default pymosix)",
        )
    args = p.parse_args(argv)

    if args.cmd == "up":
        agents = (
            None
            if args.agents == "all"
            else []
            if args.agents == "none"
            else [a.strip() for a in args.agents.split(",") if a.strip()]
        )
        indexes = None if agents is None else [int(a.removeprefix("node")) for a in agents]
        bed = TestBed.up(
            nodes=args.nodes,
            name=args.name,
            cpus_per_node=args.cpus_per_node,
            agents=indexes,
            extra_args=args.agent_arg,
        )
        print(f"test bed {bed.name!r} is up: {len(bed.nodes)} nodes")
        _print_status(bed)
        return 0
    if args.cmd == "down":
        names = bed_names() if args.all else [args.name]
        for name in names:
            down(name)
        print(f"test bed {', '.join(repr(n) for n in names) or '(none)'} is down")
        return 0
    bed = TestBed.load(args.name)
    if args.cmd == "exec":
        cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not cmd:
            print("pymosix testbed exec: give a command: exec NODE -- CMD ...", file=sys.stderr)
            return 2
        node = bed.node(args.node)
        sys.stdout.flush()
        os.execvpe("nsenter", bed.exec_argv(node.index, cmd, args.user), bed.env(node, args.user))
    if args.cmd == "status":
        if args.json:
            print_json(bed.status())
        else:
            _print_status(bed)
        return 0
    if args.cmd == "agent":
        if args.action == "start":
            bed.start_agent(args.node)
        elif args.action == "stop":
            bed.stop_agent(args.node)
        else:
            bed.kill_agent(args.node)
        return 0
    if args.cmd == "log":
        sys.stdout.write(bed.node(args.node).log.read_text(errors="replace"))
        return 0
    return 2


def _print_status(bed: TestBed) -> None:
    s = bed.status()
    print(f"{'NODE':<7} {'NODE-ID':<8} {'ADDRESS':<16} {'CPUS':<6} {'AGENT':<8} ANSWERS")
    for r in s["nodes"]:
        cpus = ",".join(map(str, r["cpus"]))
        print(
            f"{r['node']:<7} {hex(r['node_id']):<8} {r['address']:<16} {cpus:<6} {r['agent_pid'] or '-'!s:<8} {'yes' if r['answers'] else 'no'}"
        )
