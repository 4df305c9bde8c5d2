"""The `accrue` command-line tool."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _gateway_database_url() -> str:
    url = os.environ.get("ACCRUE_GATEWAY_DATABASE_URL")
    if url:
        return url
    for folder in [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]:
        run_env = folder / ".accrue" / "run.env"
        if run_env.exists():
            for line in run_env.read_text().splitlines():
                if line.startswith("ACCRUE_GATEWAY_DATABASE_URL="):
                    return line.split("=", 1)[1]
    sys.exit("accrue: set ACCRUE_GATEWAY_DATABASE_URL, or start the mesh with `make run` (it writes .accrue/run.env)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="accrue", description="Operate an Accrue installation.")
    commands = parser.add_subparsers(dest="command", required=True)
    merchant = commands.add_parser("merchant", help="merchants and their API keys").add_subparsers(dest="action", required=True)
    create = merchant.add_parser("create", help="create a merchant and print its id and API key")
    create.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    if args.command == "merchant" and args.action == "create":
        from services.gateway.merchants import create_merchant_sync

        if not args.name.strip():
            parser.error("--name must not be empty")
        merchant_id, api_key = create_merchant_sync(_gateway_database_url(), args.name)
        print(f"ACCRUE_MERCHANT_ID={merchant_id}")
        print(f"ACCRUE_API_KEY={api_key}")


if __name__ == "__main__":
    main()
