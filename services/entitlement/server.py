"""EntitlementService: proto <-> domain. Maps only: rules live in domain/, queries in store.py."""

from __future__ import annotations

from accrue.entitlement.v1 import entitlement_service_pb2_grpc

from libs.infra.service import Servicer


class EntitlementServicer(Servicer, entitlement_service_pb2_grpc.EntitlementServiceServicer):
    """Every RPC not written here answers UNIMPLEMENTED: the generated base raises
    NotImplementedError and the server's interceptor (libs/infra/grpc_server.py) turns it
    into UNIMPLEMENTED "<method> is not built yet", which the gateway answers with 501."""
