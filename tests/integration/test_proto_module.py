"""protos/ as a buf module whose dependencies resolve offline (tools/protodeps.py lays out
google/api, google/rpc and google/protobuf from the pinned wheels): the published
descriptor set holds every service of the registry with its imports and comments, and
`buf generate` with a local plugin generates a client of every service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from libs.infra.runner import ROOT
from services.registry import SERVICES

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DEPS = ROOT / ".build" / "protodeps"


@pytest.fixture(scope="module")
def protodeps() -> Path:
    subprocess.run([sys.executable, str(ROOT / "tools" / "protodeps.py")], check=True, capture_output=True, timeout=60)
    return DEPS


def test_protodeps_holds_every_import_of_the_protos(protodeps: Path) -> None:
    imports = set()
    for proto in (ROOT / "protos").rglob("*.proto"):
        imports |= {line.split('"')[1] for line in proto.read_text().splitlines() if line.startswith("import ")}
    google = sorted(name for name in imports if name.startswith("google/"))
    assert google and [name for name in google if not (protodeps / name).is_file()] == []
    assert (protodeps / "google/rpc/error_details.proto").is_file() and (protodeps / "google/rpc/status.proto").is_file()


def test_the_descriptor_set_holds_every_service_with_imports_and_source_info(protodeps: Path, tmp_path: Path) -> None:
    out = tmp_path / "accrue.binpb"
    subprocess.run(["make", "-s", "descriptors", f"DESCRIPTORS={out}"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    names = {f.name for f in files}
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert services == {d.grpc_services[0] for d in SERVICES}
    # self-contained: every import is in the set, and so are the error details a client decodes
    assert {dep for f in files for dep in f.dependency} <= names
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto", "google/api/annotations.proto"} <= names
    catalog = next(f for f in files if f.name == "accrue/catalog/v1/catalog_service.proto")
    assert any(location.leading_comments.strip() for location in catalog.source_code_info.location)


def test_buf_generate_with_a_local_plugin_builds_a_client_of_every_service(protodeps: Path, tmp_path: Path) -> None:
    template = tmp_path / "buf.gen.yaml"
    template.write_text(f"version: v2\nplugins:\n  - local: {BIN / 'protoc-gen-mypy_grpc'}\n    out: {tmp_path / 'out'}\n")
    subprocess.run(
        [str(BIN / "buf"), "generate", "--template", str(template), "--path", "protos/accrue"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    stubs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*_grpc.pyi"))
    for definition in SERVICES:
        service = definition.grpc_services[0].rsplit(".", 1)[1]
        assert any(service in (tmp_path / "out" / stub).read_text() for stub in stubs), service
