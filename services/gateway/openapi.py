"""An OpenAPI 3.1 document generated from the same descriptors the router uses."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.gateway.transcoding import Route

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32"},
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
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name.replace("accrue.", "").replace(".", "_")
        if name not in self.components:
            self.components[name] = {}  # reserve first: messages may refer to themselves
            self.components[name] = self._object(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value_field)}
        schema = self._single(field)
        if field.is_repeated:
            return {"type": "array", "items": schema}
        return schema

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_SCALARS.get(field.type, {"type": "string"}))

    def _object(self, descriptor: Descriptor) -> dict[str, Any]:
        properties = {}
        for field in descriptor.fields:
            if field.name == "update_mask":
                continue
            schema = self._field(field)
            if field.has_presence and not field.is_repeated:
                schema = {"anyOf": [schema, {"type": "null"}]}
            properties[field.json_name] = schema
        return {"type": "object", "properties": properties}


def build_openapi(routes: list[Route], *, title: str = "Accrue API", version: str = "0.1.0") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
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
                    }
                ),
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
                    "schema": schemas._single(fields[path_field]),
                }
            )
        if route.body:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas.ref(route.method.input_type)}},
            }
            op["parameters"].append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}})
        else:
            for field in route.method.input_type.fields:
                if field.name in route.path_fields:
                    continue
                op["parameters"].append({"name": field.json_name, "in": "query", "required": False, "schema": schemas._field(field)})
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
