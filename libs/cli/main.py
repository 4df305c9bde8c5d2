"""The `accrue` command-line tool."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
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


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last one is left ragged (it may hold spaces)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in [header, *rows]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accrue", description="Operate an Accrue installation.")
    commands = parser.add_subparsers(dest="command", required=True)

    merchant = commands.add_parser("merchant", help="merchants").add_subparsers(dest="action", required=True)
    create = merchant.add_parser("create", help="create a merchant and print its id and first API key")
    create.add_argument("--name", required=True)
    merchant.add_parser("list", help="list merchants (id, created, active keys, name)")

    key = commands.add_parser("key", help="a merchant's API keys").add_subparsers(dest="action", required=True)
    key_list = key.add_parser("list", help="list a merchant's keys (id, prefix, created, revoked; never the secret)")
    key_list.add_argument("--merchant", required=True, metavar="org_...")
    key_create = key.add_parser("create", help="create another key for a merchant and print it (shown once)")
    key_create.add_argument("--merchant", required=True, metavar="org_...")
    key_revoke = key.add_parser("revoke", help="revoke a key: every gateway refuses it at once")
    key_revoke.add_argument("key", metavar="KEY", help="the key's id (key_...) or its prefix as `key list` shows it")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    from libs.core.errors import DomainError
    from services.gateway import merchants

    try:
        if args.command == "merchant" and args.action == "create":
            if not args.name.strip():
                parser.error("--name must not be empty")
            merchant_id, api_key = merchants.create_merchant_sync(_gateway_database_url(), args.name)
            print(f"ACCRUE_MERCHANT_ID={merchant_id}")
            print(f"ACCRUE_API_KEY={api_key}")
        elif args.command == "merchant" and args.action == "list":
            found = merchants.list_merchants_sync(_gateway_database_url())
            print(
                _table(
                    ["ID", "CREATED", "ACTIVE_KEYS", "NAME"],
                    [[m.merchant_id, _when(m.created_at), str(m.active_keys), m.name] for m in found],
                )
            )
        elif args.command == "key" and args.action == "list":
            keys = merchants.list_api_keys_sync(_gateway_database_url(), args.merchant.strip())
            print(
                _table(
                    ["ID", "PREFIX", "CREATED", "REVOKED"], [[k.key_id, k.prefix, _when(k.created_at), _when(k.revoked_at)] for k in keys]
                )
            )
        elif args.command == "key" and args.action == "create":
            created = merchants.create_api_key_sync(_gateway_database_url(), args.merchant.strip())
            print(f"ACCRUE_MERCHANT_ID={created.key.merchant_id}")
            print(f"ACCRUE_API_KEY_ID={created.key.key_id}")
            print(f"ACCRUE_API_KEY={created.secret}")
        elif args.command == "key" and args.action == "revoke":
            revoked = merchants.revoke_api_key_sync(_gateway_database_url(), args.key)
            print(f"revoked {revoked.key_id} ({revoked.prefix}...) of {revoked.merchant_id} at {_when(revoked.revoked_at)}")
    except DomainError as err:
        sys.exit(f"accrue: {err.message} ({err.reason})")


if __name__ == "__main__":
    main()
