"""Card processors behind one adapter interface (base.py); the sandbox processor's adapter
(sandbox.py). A merchant plugs in Stripe, Adyen or Airwallex by writing one more adapter
(README "Payments: plugging in a processor")."""
