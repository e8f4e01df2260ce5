"""Customer notices: the runbooks' communication plan as an outbox (docs/customer-notices.md).

`plan.py` decides which notices are due (pure); `loop.py` runs it on every replica.
"""
