"""Lay out the protos that Accrue's protos import, for buf and for any other compiler:

    .build/protodeps/google/api/*.proto       from the googleapis-common-protos wheel
    .build/protodeps/google/rpc/*.proto       (google.rpc.Status, ErrorInfo: error details)
    .build/protodeps/google/protobuf/*.proto  well-known types, from the grpcio-tools wheel

The versions are the ones pinned in pyproject.toml, so no registry (the BSR) is needed:
buf.yaml lists this folder as a second module, and `protoc -I protos -I .build/protodeps`
(or @grpc/proto-loader's includeDirs) resolves every import. `make protos-deps` runs this.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".build" / "protodeps"


def main() -> int:
    googleapis_root = Path(next(iter(google.api.__path__))).parent
    well_known = Path(grpc_tools.__file__).parent / "_proto" / "google" / "protobuf"
    shutil.rmtree(OUT, ignore_errors=True)
    for source, target in (
        (googleapis_root / "api", OUT / "google" / "api"),
        (googleapis_root / "rpc", OUT / "google" / "rpc"),
        (well_known, OUT / "google" / "protobuf"),
    ):
        target.mkdir(parents=True)
        for proto in sorted(source.rglob("*.proto")):
            destination = target / proto.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto, destination)
    count = sum(1 for _ in OUT.rglob("*.proto"))
    print(f"laid out {count} dependency protos in {OUT.relative_to(ROOT)}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
