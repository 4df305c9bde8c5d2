"""Create or raise every JetStream stream the registry declares, before the services start:
`python -m services.streams --replicas 3` (the production overlay's `accrue-streams` Job).

Each stream is the one its producer declares (ServiceDefinition.streams), through the same
ensure_stream the services call at start, so the Job and the services never disagree on
names or subjects. Exits non-zero when a stream ends up with fewer than --require replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from libs.infra import messaging
from libs.infra.settings import ServiceSettings
from services.registry import SERVICES, WORKERS


def declared() -> dict[str, list[str]]:
    streams: dict[str, list[str]] = {}
    for definition in (*SERVICES, *WORKERS):
        streams.update(definition.streams)
    return streams


async def _ensure(url: str, replicas: int, require: int) -> None:
    nc = await messaging.connect(url, "accrue-streams")
    try:
        js = nc.jetstream()
        for name, subjects in declared().items():
            await messaging.ensure_stream(js, name, subjects, replicas=replicas, require_replicas=require)
            info = await js.stream_info(name)
            print(f"{name}: {info.config.num_replicas or 1} replica(s), subjects {', '.join(info.config.subjects or [])}")
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.streams", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3, help="replicas to create or raise each stream to (default 3)")
    parser.add_argument("--require", type=int, default=None, help="fail below this many (default: --replicas)")
    parser.add_argument("--nats-url", default=None, help="default: ACCRUE_NATS_URL")
    args = parser.parse_args(argv)
    url = args.nats_url or ServiceSettings().nats_url
    try:
        asyncio.run(_ensure(url, args.replicas, args.require if args.require is not None else args.replicas))
    except messaging.StreamReplicasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
