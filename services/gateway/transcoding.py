"""REST routes derived from the protos' google.api.http annotations (generic transcoding).

No route is written by hand: every RPC with an http rule becomes a route, its success
status comes from the accrue.api.v1.http_success_code option, and its backend is the
service that owns the proto package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from accrue.api.v1 import annotations_pb2 as accrue_annotations
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.registry import SERVICES as REGISTERED

# backend name (settings: ACCRUE_<NAME>_ADDR) -> the proto service it serves, for every
# gRPC service in the registry
SERVICES: dict[str, ServiceDescriptor] = {
    definition.name: descriptor_pool.Default().FindServiceByName(grpc_service)
    for definition in REGISTERED
    for grpc_service in definition.grpc_services
}

_VAR = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class Route:
    backend: str
    http_method: str
    template: str
    pattern: re.Pattern[str]
    path_fields: tuple[str, ...]
    body: str
    success_code: int
    grpc_path: str
    method: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]
    # set when the method may be coalesced into calls of a batch method
    coalesce: accrue_annotations.Coalesce | None = None
    batch_grpc_path: str = ""
    batch_request_class: type[Message] | None = None
    batch_response_class: type[Message] | None = None
    # a boolean response field: false answers 200 instead of success_code
    created_field: str = ""
    # the deadline of the gRPC call when it must exceed the gateway's default (0: default)
    timeout_seconds: int = 0

    @property
    def openapi_path(self) -> str:
        """The template with each variable in the REST (JSON) spelling: {versionNumber}."""
        fields = self.method.input_type.fields_by_name
        return _VAR.sub(lambda m: "{" + fields[m.group(1)].json_name + "}", self.template)


def _template_regex(template: str) -> str:
    """Literal parts escaped (":batchIngest", "."), variables as named one-segment groups."""
    out, last = [], 0
    for m in _VAR.finditer(template):
        out.append(re.escape(template[last : m.start()]))
        out.append(f"(?P<{m.group(1).replace('.', '__')}>[^/]+)")
        last = m.end()
    out.append(re.escape(template[last:]))
    return "".join(out)


def _rule_of(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def build_routes(services: dict[str, ServiceDescriptor] | None = None) -> list[Route]:
    routes: list[Route] = []
    for backend, service in (services or SERVICES).items():
        for method in service.methods:
            rule = _rule_of(method)
            if rule is None:
                continue
            verb = rule.WhichOneof("pattern")
            if verb is None or verb == "custom":
                continue
            template = getattr(rule, verb)
            fields = tuple(_VAR.findall(template))
            regex = "^" + _template_regex(template) + "$"
            options = method.GetOptions()
            code = options.Extensions[accrue_annotations.http_success_code] or 200
            coalesce = options.Extensions[accrue_annotations.coalesce] if options.HasExtension(accrue_annotations.coalesce) else None
            batch = service.methods_by_name[coalesce.batch_method] if coalesce is not None else None
            routes.append(
                Route(
                    backend=backend,
                    http_method=verb.upper(),
                    template=template,
                    pattern=re.compile(regex),
                    path_fields=fields,
                    body=rule.body,
                    success_code=code,
                    created_field=options.Extensions[accrue_annotations.created_field],
                    timeout_seconds=options.Extensions[accrue_annotations.timeout_seconds],
                    grpc_path=f"/{service.full_name}/{method.name}",
                    method=method,
                    request_class=message_factory.GetMessageClass(method.input_type),
                    response_class=message_factory.GetMessageClass(method.output_type),
                    coalesce=coalesce,
                    batch_grpc_path=f"/{service.full_name}/{batch.name}" if batch is not None else "",
                    batch_request_class=message_factory.GetMessageClass(batch.input_type) if batch is not None else None,
                    batch_response_class=message_factory.GetMessageClass(batch.output_type) if batch is not None else None,
                )
            )
    # literal segments beat variables: /v0/plans/available before /v0/plans/{id}
    routes.sort(key=lambda r: (r.template.count("{"), -len(r.template)))
    return routes


def _specificity(route: Route) -> tuple[int, ...]:
    """Literal segments before variables, segment by segment: `/grants/purchase` sorts
    before `/grants/{grant_id}`."""
    return tuple(1 if "{" in segment else 0 for segment in route.template.split("/"))


def _could_match(template: list[str], key: tuple[int, str, str]) -> bool:
    count, first, second = key
    if len(template) != count:
        return False
    for index, segment in ((1, first), (2, second)):
        if index < count and "{" not in template[index] and template[index] != segment:
            return False
    return True


class Router:
    """Routes by path, the most specific template first: a path that a literal template
    matches belongs to that template alone (`GET .../grants/purchase` is 405, never
    GetGrant with grantId "purchase"), and 405's Allow lists that template's methods."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=_specificity)  # stable: equal keys keep the protos' order
        # the routes a path could match, by (segment count, first two segments): a variable
        # matches exactly one segment, so no other route can; in the same order
        self._candidates: dict[tuple[int, str, str], list[Route]] = {}

    def _candidates_for(self, path: str) -> list[Route]:
        segments = path.split("/")
        key = (len(segments), segments[1] if len(segments) > 1 else "", segments[2] if len(segments) > 2 else "")
        found = self._candidates.get(key)
        if found is None:
            found = [route for route in self.routes if _could_match(route.template.split("/"), key)]
            if found:  # what no route can match is not remembered: random paths must not grow this
                if len(self._candidates) > 4096:
                    self._candidates.clear()
                self._candidates[key] = found
        return found

    def match(self, http_method: str, path: str) -> tuple[Route | None, dict[str, str], tuple[str, ...]]:
        """(route, path variables, the methods the path answers: for 405's Allow header)."""
        return self.match_among(self._candidates_for(path), http_method, path)

    @staticmethod
    def match_among(routes: Iterable[Route], http_method: str, path: str) -> tuple[Route | None, dict[str, str], tuple[str, ...]]:
        """match() over ``routes`` (in specificity order)."""
        allowed: list[str] = []
        template: str | None = None
        for route in routes:
            if template is not None and route.template != template:
                continue
            found = route.pattern.match(path)
            if found is None:
                continue
            template = route.template
            if route.http_method != http_method:
                allowed.append(route.http_method)
                continue
            return route, {k.replace("__", "."): v for k, v in found.groupdict().items()}, ()
        return None, {}, tuple(sorted(set(allowed)))
