"""The subscription service's domain: the Customer and Subscription aggregates (a subscription's lifecycle: trial, active,
paused, cancelled; its billing schedule) and the test clock that moves their time.

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/subscription/tests/unit).
"""
