"""The drill stack with a secondary exchange: a fake Independent Reserve as its own process, an
exporter process configured with it as `role: secondary` (its read-only key from the
environment), and its evidence following the fake's knobs."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from exporter.database.pool import Connection
from liquid_abt_drill.stack import failover_exchanges
from tests.harness import Stack, exporter_config, wait_until

KEY, SECRET = "stack-ir-key", "a secret of the stack test"


async def test_an_exporter_verifies_a_secondary_started_by_the_stack(
    stack: Stack, database: Connection, db: asyncpg.Connection
) -> None:
    kraken = stack.kraken_server()
    ir = stack.secondary_exchange("independentreserve", api_key=KEY, api_secret=SECRET)
    config = exporter_config(
        kraken.url, exchanges=failover_exchanges(), independentreserve=ir.config_section()
    )
    env = {"INDEPENDENTRESERVE_API_KEY": KEY, "INDEPENDENTRESERVE_API_SECRET": SECRET}
    exporter = stack.exporter(database_url=database.dsn, config_yaml=config, env=env)
    exporter.wait_for_metric(
        'liquid_abt_exchange_verification_ok{exchange="independentreserve"} 1.0'
    )

    ir.set_market(balances={"AUD": "42.5"})

    async def short_of_aud() -> bool:
        balance = await db.fetchval(
            """SELECT balance_aud FROM liquid_abt.exchange_verifications
               WHERE exchange = 'independentreserve'"""
        )
        return balance == Decimal("42.5")

    async def primary_quoted() -> bool:
        return bool(await db.fetchval(
            """SELECT ok AND best_bid < best_ask FROM liquid_abt.exchange_verifications
               WHERE exchange = 'kraken'"""
        ))  # fmt: skip

    await wait_until(short_of_aud)
    await wait_until(primary_quoted)
    ir.set_mode("down")
    exporter.wait_for_metric(
        'liquid_abt_exchange_verification_ok{exchange="independentreserve"} 0.0'
    )
    assert await primary_quoted(), "the primary's row does not follow the secondary's"
