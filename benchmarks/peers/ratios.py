"""Ratios of one server's requests/s to others', per round, from the `round N name rps=.. p50=.. p99=..`
lines of stream.sh / vma.sh. Usage: python3 ratios.py ROUNDS_FILE SERVER PEER [PEER...]"""

import re
import sys


def ms(value: str) -> float:
    """wrk's latency (850.00us, 12.34ms, 1.20s) in milliseconds."""
    num, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(num) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


path, server, *peers = sys.argv[1:]
rounds: dict[str, dict[str, tuple[float, float]]] = {}
with open(path) as f:
    for line in f:
        m = re.match(r"round (\d+) (\S+) rps=([\d.]+) p50=(\S+) p99=(\S+)", line)
        if m:
            rounds.setdefault(m[1], {})[m[2]] = (float(m[3]), ms(m[5]))
for r, row in sorted(rounds.items()):
    rps, p99 = row[server]
    parts = [f"{server}/{p} = {rps / row[p][0]:.2f}x (p99 {p99:.0f} vs {row[p][1]:.0f} ms)" for p in peers]
    print(f"round {r}: " + "; ".join(parts))
