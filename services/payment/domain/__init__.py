"""The payment service's domain: payment sessions, one-off payments, saved methods, charge
attempts (the exactly-once state machine) and refunds (model.py), what calls ask for
(commands.py), what the use cases need (ports.py) and the use cases (use_cases.py).

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/payment/tests/unit).
"""
