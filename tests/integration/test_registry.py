"""The registry (services/registry.py) is the one list of processes: the gateway routes to
its services, and the Kubernetes manifests, which cannot be generated at deploy time,
agree with it (names, commands, ports, databases, the settings it declares)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from libs.infra.runner import ROOT
from libs.infra.service import ServiceDefinition
from libs.infra.settings import ServiceSettings
from services.gateway.transcoding import SERVICES as GATEWAY_BACKENDS
from services.run import TOPOLOGY

BASE = ROOT / "deploy" / "k8s" / "base"
EXTERNALS = [external.definition for external in TOPOLOGY.externals]
PROCESSES = [*EXTERNALS, *TOPOLOGY.services, *TOPOLOGY.workers, TOPOLOGY.gateway]
GRPC_PORT = ServiceSettings().grpc_port


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest(definition: ServiceDefinition) -> dict[str, dict[str, Any]]:
    """The file's objects by kind."""
    return {doc["kind"]: doc for doc in _documents(BASE / f"{definition.name}.yaml")}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_the_kustomization_lists_one_file_per_process_of_the_registry() -> None:
    (kustomization,) = _documents(BASE / "kustomization.yaml")
    assert kustomization["resources"] == ["config.yaml", *(f"{d.name}.yaml" for d in PROCESSES)]
    assert sorted(p.name for p in BASE.glob("*.yaml")) == sorted(["kustomization.yaml", *kustomization["resources"]])


@pytest.mark.parametrize("definition", PROCESSES, ids=lambda d: d.name)
def test_each_manifest_runs_its_definition(definition: ServiceDefinition) -> None:
    objects = _manifest(definition)
    deployment = objects["Deployment"]
    assert deployment["metadata"]["name"] == definition.name
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == definition.name
    (server,) = pod["spec"]["containers"]
    assert server["command"] == ["python", "-m", TOPOLOGY.entry, definition.name]
    init = {c["name"]: c for c in pod["spec"].get("initContainers", [])}
    if definition.migrations_dir is not None:
        assert init["migrate"]["command"] == ["python", "-m", TOPOLOGY.entry, definition.name, "migrate"]
        assert _env(server)["ACCRUE_MIGRATE_ON_START"] == "false"
    else:
        assert "migrate" not in init and "ACCRUE_MIGRATE_ON_START" not in _env(server)
    for container in _containers(deployment):
        secret = _env(container)["ACCRUE_DATABASE_URL"]["secretKeyRef"]
        assert secret == {"name": f"accrue-{definition.database_name}-db", "key": "url"}, container["name"]


@pytest.mark.parametrize("definition", PROCESSES, ids=lambda d: d.name)
def test_each_manifest_serves_and_probes_the_port_its_settings_read(definition: ServiceDefinition) -> None:
    objects = _manifest(definition)
    (server,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = _env(server)
    scheme, port = ("grpc", GRPC_PORT) if definition.serves_grpc else ("http", definition.settings().http_port)
    assert env[f"ACCRUE_{scheme.upper()}_PORT"] == str(port)
    assert env[f"ACCRUE_{scheme.upper()}_HOST"] == "0.0.0.0"
    assert server["ports"] == [{"name": scheme, "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if scheme == "grpc":
            assert server[probe]["grpc"] == {"port": port}, probe
        else:
            path = "/readyz" if probe == "readinessProbe" else "/healthz"  # ready = every backend (or its database) answers
            assert server[probe]["httpGet"] == {"path": path, "port": scheme}, probe
    if definition in TOPOLOGY.workers:
        assert "Service" not in objects  # a worker is reached by nobody; its port is for the kubelet's probes
    else:
        assert objects["Service"]["spec"]["ports"][0]["targetPort"] == scheme


@pytest.mark.parametrize("definition", PROCESSES, ids=lambda d: d.name)
def test_each_manifest_sets_what_the_definition_declares(definition: ServiceDefinition) -> None:
    (server,) = _manifest(definition)["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = _env(server)
    for key, value in definition.env.items():
        assert env[key] == value
    for other in definition.talks_to:
        assert env[f"ACCRUE_{other.upper()}_ADDR"] == f"{other}:{GRPC_PORT}"
    assert {key for key in env if key.endswith("_ADDR")} == {f"ACCRUE_{other.upper()}_ADDR" for other in definition.talks_to}


@pytest.mark.parametrize("definition", PROCESSES, ids=lambda d: d.name)
def test_only_the_processes_that_mint_tokens_get_the_signing_key(definition: ServiceDefinition) -> None:
    (server,) = _manifest(definition)["Deployment"]["spec"]["template"]["spec"]["containers"]
    names = {item["name"] for item in server.get("env", [])}
    mints = definition.mints_tokens or definition.name == TOPOLOGY.gateway.name
    assert ("ACCRUE_TOKEN_SIGNING_KEY" in names) == mints


def test_the_dev_databases_and_secrets_are_the_registrys() -> None:
    databases = sorted({d.database_name for d in PROCESSES})
    secrets = [doc["metadata"]["name"] for doc in _documents(ROOT / "deploy/k8s/components/postgres/secrets.yaml")]
    assert secrets == [f"accrue-{name}-db" for name in [d.database_name for d in PROCESSES if d.migrations_dir is not None]]
    init = next(d for d in _documents(ROOT / "deploy/k8s/components/postgres/postgres.yaml") if d["kind"] == "ConfigMap")
    script = init["data"]["01-accrue-databases.sql"]
    assert sorted(set(re.findall(r"CREATE DATABASE accrue_(\w+)", script))) == databases


def test_the_externals_are_http_processes_of_their_own_that_the_production_overlay_leaves_out() -> None:
    assert EXTERNALS, "the sandbox card processor runs as an external"
    production = (ROOT / "deploy/k8s/overlays/production/kustomization.yaml").read_text()
    for definition in EXTERNALS:
        assert not definition.serves_grpc and definition.migrations_dir is not None and not definition.messaging
        assert definition.name not in GATEWAY_BACKENDS  # the gateway never routes to one
        for kind in ("Deployment", "Service", "ServiceAccount"):
            assert (
                f"$patch: delete\n      apiVersion: {'apps/v1' if kind == 'Deployment' else 'v1'}\n      kind: {kind}\n      metadata:\n        name: {definition.name}"
                in production
            )


def test_the_gateway_routes_to_every_service_of_the_registry() -> None:
    assert list(GATEWAY_BACKENDS) == [d.name for d in TOPOLOGY.services]
    assert {name: service.full_name for name, service in GATEWAY_BACKENDS.items()} == {
        d.name: d.grpc_services[0] for d in TOPOLOGY.services
    }
    assert TOPOLOGY.gateway.talks_to == tuple(GATEWAY_BACKENDS)


def test_libs_import_nothing_from_services() -> None:
    """libs/ is the shared layer: what knows the services lives under services/."""
    offenders = []
    for path in sorted((ROOT / "libs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n == "services" or n.startswith("services.")]
    assert offenders == []
