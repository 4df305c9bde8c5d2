"""CPU per event of every process on this machine, from /proc: what a load cost each
process of the mesh (PostgreSQL's backends and nats-server included, which py-spy cannot
sample) and the load generator, in microseconds of CPU per event. More reliable than
sampling: it counts every thread's user and system time, and nothing that is parked."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _name(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = raw.replace(b"\0", b" ").decode(errors="replace").split()
    if not words:
        return ""
    if "services.run" in words:  # python -m services.run <service>
        return words[words.index("services.run") + 1] if words[-1] != "services.run" else "mesh"
    if words[0].startswith("postgres:"):
        return "postgres " + " ".join(words[1:3])
    if Path(words[0]).name.startswith("python") and len(words) > 1:  # the module or script it runs
        return "python " + (words[2] if words[1] == "-m" and len(words) > 2 else Path(words[1]).name)
    return Path(words[0]).name


def snapshot() -> dict[str, tuple[str, float]]:
    """pid -> (process name, CPU seconds so far) for every process readable here."""
    out: dict[str, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[pid] = (_name(pid), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def report(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]], events: int, seconds: float) -> None:
    """Each process's CPU over the run, per event and as a share of one core, by name
    (PostgreSQL backends summed), heaviest first, then the total."""
    by_name: dict[str, float] = {}
    for pid, (name, used) in after.items():
        spent = used - before.get(pid, (name, 0.0))[1]
        if spent > 0 and name:
            key = "postgres (all backends)" if name.startswith("postgres") else name
            by_name[key] = by_name.get(key, 0.0) + spent
    events = max(events, 1)
    print(f"CPU per event, every process (/proc, {events:,} events in {seconds:.1f} s)")
    for name, spent in sorted(by_name.items(), key=lambda kv: -kv[1]):
        if spent / seconds >= 0.005:
            print(f"  {spent / events * 1e6:8.1f} us/event  {spent / seconds:6.0%} of a core  {name[:70]}")
    total = sum(by_name.values())
    print(f"  {total / events * 1e6:8.1f} us/event  {total / seconds:6.0%} of a core  total (of {os.cpu_count()} cores)")
