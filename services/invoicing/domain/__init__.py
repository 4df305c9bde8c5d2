"""The invoicing service's domain: the Invoice aggregate (ACTIVE -> CLOSING -> ISSUED ->
PAID | PAYMENT_FAILED; model.py), the engine's steps and the payment (use_cases.py), and
the pure calculation of an invoice's lines, totals and provenance (calculation.py).

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/invoicing/tests/unit).
"""
