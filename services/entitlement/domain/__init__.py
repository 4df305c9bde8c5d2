"""The entitlement service's domain: the Entitlement aggregate (a feature granted to a customer, its limit and what is
used of it) and the rules that grant, revoke and check it.

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/entitlement/tests/unit).
"""
