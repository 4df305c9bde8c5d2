"""Routes come from the protos' google.api.http rules, success codes from our option."""

from __future__ import annotations

from services.gateway.openapi import build_openapi
from services.gateway.transcoding import SERVICES, Route, Router, build_routes


def _route(routes: list[Route], method: str, template: str) -> Route:
    (found,) = [r for r in routes if r.http_method == method and r.template == template]
    return found


def test_every_annotated_rpc_becomes_a_route_with_its_success_code() -> None:
    routes = build_routes()
    from google.api import annotations_pb2

    annotated = sum(1 for service in SERVICES.values() for m in service.methods if m.GetOptions().HasExtension(annotations_pb2.http))
    assert len(routes) == annotated
    assert _route(routes, "POST", "/v0/products").success_code == 201
    assert _route(routes, "GET", "/v0/products/{id}").success_code == 200
    assert _route(routes, "DELETE", "/v0/prices/{id}").success_code == 204
    events = _route(routes, "POST", "/v0/events")
    assert events.success_code == 202
    assert events.coalesce is not None and events.batch_grpc_path == "/accrue.metering.v1.MeteringService/BatchIngestEvents"
    mint = _route(routes, "POST", "/v0/plans/{id}/versions")
    assert (mint.backend, mint.grpc_path, mint.body) == ("catalog", "/accrue.catalog.v1.CatalogService/MintPlanVersion", "*")


def test_router_matches_variables_and_tells_a_wrong_method_from_an_unknown_path() -> None:
    router = Router(build_routes())
    route, variables, _ = router.match("GET", "/v0/plans/plan_1/versions/3")
    assert route is not None and route.method.name == "GetPlanVersion"
    assert variables == {"id": "plan_1", "version_number": "3"}
    route, _, allowed = router.match("PUT", "/v0/products/prod_1")
    assert route is None and allowed == ("GET", "PATCH")
    route, _, allowed = router.match("GET", "/v0/nothing")
    assert route is None and allowed == ()


def test_a_literal_segment_owns_its_path_before_a_variable_one() -> None:
    router = Router(build_routes())
    route, fields, _ = router.match("POST", "/v1/entitlements/ent_1/grants/purchase")
    assert route is not None and route.method.name == "PurchaseGrant" and fields == {"entitlement_id": "ent_1"}
    route, fields, _ = router.match("GET", "/v1/entitlements/ent_1/grants/grant_1")
    assert route is not None and route.method.name == "GetGrant" and fields["grant_id"] == "grant_1"
    # GET/DELETE on .../purchase are not GetGrant/VoidGrant of a grant called "purchase"
    for method in ("GET", "DELETE", "PUT"):
        route, _, allowed = router.match(method, "/v1/entitlements/ent_1/grants/purchase")
        assert (route, allowed) == (None, ("POST",))
    route, _, allowed = router.match("PATCH", "/v0/plans/available")
    assert (route, allowed) == (None, ("GET",))


def test_openapi_document_has_every_route_in_rest_spelling() -> None:
    routes = build_routes()
    doc = build_openapi(routes)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]["/v0/products"]) == {"get", "post"}
    assert "201" in doc["paths"]["/v0/products"]["post"]["responses"]
    version = doc["paths"]["/v0/plans/{id}/versions/{versionNumber}"]
    assert {p["name"] for p in version["get"]["parameters"]} == {"id", "versionNumber"}
    product = doc["components"]["schemas"]["catalog_v1_Product"]["properties"]
    assert product["createdAt"] == {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    assert product["name"] == {"type": "string"}
    operations = sum(len(methods) for methods in doc["paths"].values())
    assert operations == len(routes)


def test_the_candidate_index_answers_as_a_scan_of_every_route() -> None:
    """Router.match looks only at the routes a path's segment count and first two segments
    allow; on every template filled in (and bent: a segment more, one less, another
    method), it answers what trying every route in order answers."""
    import re as regex

    router = Router(build_routes())

    def scan(method: str, path: str) -> tuple[object, dict[str, str], tuple[str, ...]]:
        return Router.match_among(router.routes, method, path)

    paths = set()
    for route in router.routes:
        filled = regex.sub(r"\{[^}]+\}", "x_1", route.template)
        paths |= {
            filled,
            filled + "/more",
            filled.rsplit("/", 1)[0],
            filled.replace("/v0/", "/v9/"),
            route.template.replace("{", "").replace("}", ""),
        }
    paths |= {"/", "", "/v0", "/v0/", "//v0/products", "/v0/products/"}
    methods = ("GET", "POST", "PATCH", "DELETE", "PUT")
    for path in sorted(paths):
        for method in methods:
            assert router.match(method, path) == scan(method, path), (method, path)
