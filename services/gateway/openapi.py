"""An OpenAPI 3.1 document generated from the same descriptors the router uses."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from libs.infra.declared import integer_bounds, is_map, is_required, rules_of
from services.gateway.transcoding import Route

# Paygentic requests carry the merchant id; the gateway takes it from the key (a request
# naming another merchant is refused), so the document marks it as set by the server.
_MERCHANT_FIELD = "merchant_id"
# one character that is not white space as Python's str.isspace() sees it (what the
# services strip), spelled out: regex engines disagree on what \\s covers
_NOT_BLANK = "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028-\\u2029\\u202f\\u205f\\u3000]"

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string"},
        "error": {"type": "string"},
        "code": {"type": "string"},
        "details": {"type": "object", "additionalProperties": True},
    },
}


class _Schemas:
    """Components from descriptors. Request messages carry what the protos declare
    (google.api.field_behavior REQUIRED, accrue.api.v1.field bounds: the rules every
    service checks); response messages list every field as required, since the gateway
    always prints each one (null when unset)."""

    def __init__(self, output_only: set[str]) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}
        self._output_only = output_only

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name.replace("accrue.", "").replace(".", "_")
        if name not in self.components:
            self.components[name] = {}  # reserve first: messages may refer to themselves
            self.components[name] = self._object(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        rules = rules_of(field)
        if field.message_type is not None and is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self._single(value_field, rules)}
            if rules is not None and rules.HasField("max_items"):
                schema["maxProperties"] = rules.max_items
            if rules is not None and rules.HasField("max_key_length"):
                schema["propertyNames"] = {"maxLength": rules.max_key_length}
            return schema
        if field.is_repeated:
            array: dict[str, Any] = {"type": "array", "items": self._single(field, rules)}
            if rules is not None and rules.HasField("max_items"):
                array["maxItems"] = rules.max_items
            if is_required(field):
                array["minItems"] = 1
            return array
        return self._single(field, rules)

    def _single(self, field: FieldDescriptor, rules: Any = None) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        schema = dict(_SCALARS.get(field.type, {"type": "string"}))
        bounds = integer_bounds(field)
        if bounds is not None and schema.get("type") == "integer":  # 64-bit integers are JSON strings
            schema["minimum"], schema["maximum"] = bounds
        if field.type == FieldDescriptor.TYPE_STRING and is_required(field) and not (rules is not None and rules.one_of):
            schema["minLength"] = 1
        if rules is None:
            return schema
        if rules.one_of:
            schema["enum"] = list(rules.one_of)
        if rules.HasField("max_length"):
            schema["maxLength"] = rules.max_length
        if rules.HasField("min_length"):
            schema["minLength"] = rules.min_length
        if rules.pattern:
            schema["pattern"] = f"^(?:{rules.pattern})$"
        elif rules.not_blank:
            schema["pattern"] = _NOT_BLANK  # unanchored: holds a character other than white space
        return schema

    def body(self, descriptor: Descriptor, path_fields: tuple[str, ...]) -> dict[str, Any]:
        """A request body: the request message without the fields the path carries."""
        if not path_fields:
            return self.ref(descriptor)
        return self._object(descriptor, exclude=path_fields)

    def _object(self, descriptor: Descriptor, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        properties = {}
        required = []
        output = descriptor.full_name in self._output_only
        update = "update_mask" in descriptor.fields_by_name
        for field in descriptor.fields:
            if field.name == "update_mask" or field.name in exclude:
                continue
            schema = self.field(field)
            if (field.has_presence and not field.is_repeated) if output else _nullable_in_a_request(field, update):
                schema = {"anyOf": [schema, {"type": "null"}]}
            if not output and field.name == _MERCHANT_FIELD:
                # the API key names the merchant; a request may repeat it, never choose it
                schema = {**schema, "readOnly": True, "description": "The caller's merchant (from the API key); may be omitted."}
            properties[field.json_name] = schema
            in_a_oneof = field.containing_oneof is not None and not field.containing_oneof.name.startswith("_")
            if (output and not in_a_oneof) or (not output and is_required(field)):
                required.append(field.json_name)
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if not output:  # the gateway refuses unknown fields (400 UNKNOWN_FIELD)
            out["additionalProperties"] = False
        if required:
            out["required"] = required
        return out


def _nullable_in_a_request(field: FieldDescriptor, update: bool) -> bool:
    """In a request, null means "absent" (a list, a map, a plain scalar) or "clear" (an
    optional field): accepted everywhere but where a value is required or may not be
    empty, and in an update only where the field is declared clearable."""
    if is_required(field):
        return False
    rules = rules_of(field)
    if update and field.has_presence and not field.is_repeated:
        return rules is not None and rules.clearable
    return not (rules is not None and (rules.not_blank or (rules.HasField("min_length") and rules.min_length > 0)))


def _reachable(descriptors: list[Descriptor]) -> set[str]:
    seen: set[str] = set()
    stack = list(descriptors)
    while stack:
        descriptor = stack.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        stack.extend(f.message_type for f in descriptor.fields if f.message_type is not None)
    return seen


def _resource_key(message: Descriptor) -> str:
    """`Product` -> `productId`: how other requests name a reference to it."""
    name = message.name
    return name[0].lower() + name[1:] + "Id"


def _links(route: Route, routes: list[Route]) -> dict[str, Any]:
    """OpenAPI links from a create to what takes its id (stateful clients and fuzzers
    follow them): the resource's own paths (`/v0/plans/{id}`, `/v0/plans/{id}/versions`),
    and every request with a `<resource>Id` field (`productId`, `feeId`) or a list of
    them (a plan's `prices`)."""
    output = route.method.output_type
    if route.http_method != "POST" or "id" not in output.fields_by_name:
        return {}
    key = _resource_key(output)
    source_fields = {f.json_name for f in output.fields}
    links: dict[str, Any] = {}
    for target in routes:
        if target is route:
            continue
        inputs = target.method.input_type.fields_by_name
        link: dict[str, Any] = {"parameters": {}}
        own_path = target.template.startswith(route.template + "/{id}")
        parent_path = bool(route.path_fields) and target.template.startswith(route.template.rsplit("/", 1)[0] + "/")
        for name in target.path_fields:
            json_name = inputs[name].json_name
            if name == "id" and own_path:
                link["parameters"][f"path.{json_name}"] = "$response.body#/id"
            elif name == "id" and parent_path and "id" in route.path_fields:
                link["parameters"][f"path.{json_name}"] = "$request.path.id"
            elif json_name in source_fields and name != "id":
                link["parameters"][f"path.{json_name}"] = f"$response.body#/{json_name}"
        if len(link["parameters"]) != len(target.path_fields):
            link["parameters"] = {}
        references = [f for f in target.method.input_type.fields if f.json_name == key or (key == "priceId" and f.json_name == "prices")]
        for field in references:
            value: Any = ["$response.body#/id"] if field.is_repeated else "$response.body#/id"
            if target.body:
                link.setdefault("requestBody", {})[field.json_name] = value
            elif not field.is_repeated:
                link["parameters"][f"query.{field.json_name}"] = value
        if not link["parameters"] and "requestBody" not in link:
            continue
        if not target.path_fields or link["parameters"]:
            links[f"{target.method.name}"] = {"operationId": target.method.name, **{k: v for k, v in link.items() if v}}
    return links


def _existed(schema: dict[str, Any]) -> dict[str, Any]:
    """The 200 of a create whose resource already existed (route.created_field)."""
    return {"description": "Already existed", "content": {"application/json": {"schema": schema}}}


def build_openapi(routes: list[Route], *, title: str = "Accrue API", version: str = "0.1.0") -> dict[str, Any]:
    inputs = _reachable([route.method.input_type for route in routes])
    schemas = _Schemas(_reachable([route.method.output_type for route in routes]) - inputs)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        links = _links(route, routes)
        op: dict[str, Any] = {
            "operationId": route.method.name,
            "tags": [route.backend],
            "parameters": [],
            "responses": {
                str(route.success_code): (
                    {"description": "No content"}
                    if route.success_code == 204
                    else {
                        "description": "Success",
                        "content": {"application/json": {"schema": schemas.ref(route.method.output_type)}},
                        **({"links": links} if links else {}),
                    }
                ),
                **({"200": _existed(schemas.ref(route.method.output_type))} if route.created_field else {}),
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        fields = route.method.input_type.fields_by_name
        for path_field in route.path_fields:
            op["parameters"].append(
                {
                    "name": fields[path_field].json_name,
                    "in": "path",
                    "required": True,
                    "schema": schemas.field(fields[path_field]),
                }
            )
        if route.body:
            # a body is required when it has a required field; else no body is an empty one
            # (POST /v0/testClocks: every field has a default)
            body_fields = [f for f in route.method.input_type.fields if f.name not in route.path_fields]
            op["requestBody"] = {
                "required": any(is_required(f) for f in body_fields),
                "content": {"application/json": {"schema": schemas.body(route.method.input_type, route.path_fields)}},
            }
            op["parameters"].append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A replay with the same key returns the first result; other parameters: 409",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
                }
            )
        else:
            for field in route.method.input_type.fields:
                if field.name in route.path_fields:
                    continue
                op["parameters"].append(
                    {"name": field.json_name, "in": "query", "required": is_required(field), "schema": schemas.field(field)}
                )
        paths.setdefault(route.openapi_path, {})[route.http_method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Paygentic-compatible REST API served by the Accrue gateway.",
        },
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
    }
