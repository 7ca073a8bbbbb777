"""SecantusDB as Saldo runs it: `secantusd-py` with Cosmos DB's transaction time limit.

Cosmos DB (API for MongoDB) ends a multi-document transaction after 5 seconds
(../shared/reference/azure.md). SecantusDB keeps an unfinished one for 60 seconds (mongod's
`transactionLifetimeLimitSeconds`) and has no flag for it. The difference matters to Saldo: a
worker instance that is SIGKILLed or SIGSTOPped half-way through a ledger transaction holds the
ledger's sequence counter until the database ends that transaction, and every other instance of
its region gets WriteConflict (112) until then. With Azure's limit here too, what the local
stack and the tests see of a stalled writer is what production sees
(crates/store/tests/secantus.rs, `a_writer_stopped_mid_transaction_does_not_block_the_ledger_for_long`).

Usage: python3 tools/secantusd.py [--transaction-lifetime-seconds S] <secantusd-py arguments>
"""

from __future__ import annotations

import argparse
import functools
import sys

import secantus.cli as cli

# Cosmos DB's limit on one multi-document transaction.
COSMOS_TRANSACTION_LIMIT_SECONDS = 5.0


def main() -> int:
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument(
        "--transaction-lifetime-seconds",
        type=float,
        default=COSMOS_TRANSACTION_LIMIT_SECONDS,
    )
    args, rest = ours.parse_known_args(sys.argv[1:])
    lifetime = args.transaction_lifetime_seconds
    if not lifetime > 0:
        print(
            f"secantusd.py: --transaction-lifetime-seconds must be > 0, not {lifetime}",
            file=sys.stderr,
        )
        return 2
    # `secantus.cli.main` builds the server from this name; every other setting stays its own.
    cli.SecantusDBServer = functools.partial(
        cli.SecantusDBServer, transaction_lifetime_seconds=lifetime
    )
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
