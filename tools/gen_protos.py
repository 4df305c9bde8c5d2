"""Generate Python messages, gRPC stubs and type stubs from protos/ into gen/.

Uses grpcio-tools' bundled protoc; the google/api and google/rpc protos come from the
googleapis-common-protos wheel (their generated modules are imported from that wheel, so
they are not regenerated here). Generated code is never edited by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen"
# the protoc plugins installed beside this interpreter (the venv's bin/)
BIN = Path(sys.executable).parent


def main() -> int:
    googleapis_root = Path(next(iter(google.api.__path__))).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{googleapis_root}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    # Regular packages (with __init__.py) so mypy and importers see them plainly.
    for directory in [OUT / "accrue", *(p for p in (OUT / "accrue").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (OUT / "accrue" / "py.typed").touch()
    print(f"generated {len(files)} protos into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
