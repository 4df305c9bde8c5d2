"""The payment service's domain: the Payment aggregate (its attempts, refunds and their states) and the rules that
decide what may be captured or refunded.

Plain Python, no gRPC, SQL or NATS: aggregates check their rules and record the domain
events their changes cause; the unit of work turns those into outbox rows. Unit tests
run on fakes (services/payment/tests/unit).
"""
