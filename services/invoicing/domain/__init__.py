"""The invoicing service's domain: the Invoice aggregate (draft -> open -> paid | void; its line items and totals in
minor units) and the rules that build line items from usage and fees.

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/invoicing/tests/unit).
"""
