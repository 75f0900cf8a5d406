"""``mosctl``: openMosix's node control, the same verbs.

Reading (optional NODE: hex id, decimal id, map number, IP, host name or home; default this
node):
  getload, getspeed, getmem, getfree, getutil, status, isup, whois
Setting this node:
  setspeed N; quiet / noquiet (stop / resume sending load information);
  stay / nostay (no automatic migration away); lstay / nolstay (local jobs stay, guests may go);
  block / noblock (refuse / accept guests); expel (send guests home; implies block);
  bring (bring this node's jobs home; implies lstay)
  --persist with setspeed, stay, lstay, block (and their no- forms): keep the setting across
  agent restarts (in the state directory; root only)
About a job:
  cantmove PID (why the job cannot move, as openMosix's /proc/PID/cantmove said)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pymosix.cli._common import node_arg, print_json, run_tool
from pymosix.control_client import call
from pymosix.errors import PymosixError
from pymosix.ids import HOME, describe_node, format_node_id

#: getter -> (field of the load row, how to print it)
GETTERS: dict[str, tuple[str, str]] = {
    "getload": ("load", "{:.2f}"),
    "getspeed": ("speed", "{}"),
    "getmem": ("mem_total", "{}"),
    "getfree": ("mem_free", "{}"),
    "getutil": ("util", "{:.0%}"),
}
#: flag verb -> (setting, value)
FLAGS: dict[str, tuple[str, bool]] = {
    "stay": ("stay", True),
    "nostay": ("stay", False),
    "lstay": ("lstay", True),
    "nolstay": ("lstay", False),
    "block": ("block", True),
    "noblock": ("block", False),
    "quiet": ("quiet", True),
    "noquiet": ("quiet", False),
}
#: verbs that act and wait, served by the agent's migration side
ACTIONS = {"expel", "bring"}


def find_row(rows: list[dict[str, Any]], node: str | None) -> dict[str, Any]:
    if node is None:
        return next(r for r in rows if r["self"])
    target = node_arg(node)
    if target == HOME:
        return next(r for r in rows if r["self"])
    for r in rows:
        if r["node_id"] == target:
            return r
    raise PymosixError(
        f"node {node} ({describe_node(int(target))}) is not in this node's map (see showmap)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mosctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "verb",
        choices=[*GETTERS, "status", "isup", "whois", "setspeed", "cantmove", *FLAGS, *ACTIONS],
    )
    p.add_argument(
        "arg", nargs="?", help="a node (getters), the speed (setspeed) or a job's PID (cantmove)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--persist", action="store_true", help="keep the setting across agent restarts")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def out(data: dict[str, Any], text: str) -> int:
        if args.json:
            print_json(data)
        else:
            print(text)
        return 0

    def body() -> int:
        v = args.verb
        if args.persist and v not in ("setspeed", *FLAGS):
            raise PymosixError(
                f"--persist goes with a setting (setspeed, stay, block ...), not {v}"
            )
        if v in GETTERS:
            row = find_row(call("loads")["nodes"], args.arg)
            if not row.get("up"):
                raise PymosixError(
                    f"no load information from node {describe_node(row['node_id'])} (down or quiet)"
                )
            field, fmt = GETTERS[v]
            return out({"node_id": row["node_id"], field: row[field]}, fmt.format(row[field]))
        if v == "isup":
            row = find_row(call("loads")["nodes"], args.arg)
            return out(
                {"node_id": row["node_id"], "up": bool(row.get("up"))},
                "yes" if row.get("up") else "no",
            )
        if v == "whois":
            if args.arg is None:
                status = call("status")
                return out(
                    {"node_id": status["node_id"], "address": status["address"]},
                    f"This is pymosix #{status['node_id']} at {status['address']}",
                )
            rows = call("map")["nodes"]
            target = node_arg(args.arg, rows)
            if target == HOME:
                target = next(n["node_id"] for n in rows if n["self"])
            for n in rows:
                if n["node_id"] == target:
                    return out(
                        n,
                        f"pymosix #{n['node_id']} ({format_node_id(n['node_id'])}) is at IP address {n['address']}",
                    )
            raise PymosixError(f"node {args.arg} is not in this node's map")
        if v == "status":
            s = call("status")
            s.pop("ok", None)
            c, f = s["counters"], s["flags"]
            lines = [
                f"This is pymosix #{s['node_id']} ({format_node_id(s['node_id'])}) at {s['address']}, {s['nodes']} node(s) in the map",
                f"speed {f['speed']}; stay {'on' if f['stay'] else 'off'}; lstay {'on' if f['lstay'] else 'off'}; "
                f"block {'on' if f['block'] else 'off'}; quiet {'on' if f['quiet'] else 'off'}",
                f"datagrams: sent {c['sent']}, received {c['received']}, rejected {c['rejected']} "
                f"(malformed {c['rejected_malformed']}, authentication {c['rejected_auth']}, replay {c['rejected_replay']}, "
                f"stale epoch {c.get('rejected_stale', 0)}, clock {c.get('rejected_clock', 0)})",
            ]
            if "control" in s:
                ctl = s["control"]
                lines.append(
                    f"control socket: {sum(ctl['connections'].values())} connection(s) of "
                    f"{len(ctl['connections'])} user(s), {ctl['refused']} refused"
                )
            lines += [
                f"warning: refusing datagrams from {o['message']}" for o in s.get("offenders", [])
            ]
            return out(s, "\n".join(lines))
        if v == "cantmove":
            if args.arg is None or not args.arg.isdigit():
                raise PymosixError("cantmove takes a job's PID, e.g. 'mosctl cantmove 14816' (mps)")
            r = call("cantmove", pid=int(args.arg))
            r.pop("ok", None)
            return out(r, r["why"] or f"job {r['home_pid']}: nothing keeps it from moving")
        if v == "setspeed":
            if args.arg is None or not args.arg.isdigit():
                raise PymosixError("setspeed takes a whole number, e.g. 'mosctl setspeed 15000'")
            r = call("set", name="speed", value=int(args.arg), persist=args.persist)
            return out(r["flags"], f"speed set to {r['flags']['speed']}")
        if v in FLAGS:
            name, value = FLAGS[v]
            if args.persist and name == "quiet":
                raise PymosixError("quiet cannot be kept across restarts (drop --persist)")
            r = call("set", name=name, value=value, persist=args.persist)
            return out(r["flags"], f"{name} {'on' if value else 'off'}")
        r = call(v, timeout_s=600)
        r.pop("ok", None)
        return out(r, r.get("message", f"{v}: done"))

    return run_tool("mosctl", body)
