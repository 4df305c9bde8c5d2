"""The ``accrue`` command-line tool (pyproject: ``accrue = "services.cli:main"``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from libs.cli import dead_letters
from libs.cli.main import mesh_setting, table, when
from libs.core.errors import DomainError
from services import registry
from services.gateway import merchants


def _gateway_database_url() -> str:
    return mesh_setting(
        "ACCRUE_GATEWAY_DATABASE_URL",
        "set ACCRUE_GATEWAY_DATABASE_URL, or start the mesh with `make run` (it writes .accrue/run.env)",
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

    dead_letters.add_parser(commands)
    return parser


def _merchants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "merchant" and args.action == "create":
        if not args.name.strip():
            parser.error("--name must not be empty")
        merchant_id, api_key = merchants.create_merchant_sync(_gateway_database_url(), args.name)
        print(f"ACCRUE_MERCHANT_ID={merchant_id}")
        print(f"ACCRUE_API_KEY={api_key}")
    elif args.command == "merchant" and args.action == "list":
        found = merchants.list_merchants_sync(_gateway_database_url())
        rows = [[m.merchant_id, when(m.created_at), str(m.active_keys), m.name] for m in found]
        print(table(["ID", "CREATED", "ACTIVE_KEYS", "NAME"], rows))
    elif args.command == "key" and args.action == "list":
        keys = merchants.list_api_keys_sync(_gateway_database_url(), args.merchant.strip())
        print(table(["ID", "PREFIX", "CREATED", "REVOKED"], [[k.key_id, k.prefix, when(k.created_at), when(k.revoked_at)] for k in keys]))
    elif args.command == "key" and args.action == "create":
        created = merchants.create_api_key_sync(_gateway_database_url(), args.merchant.strip())
        print(f"ACCRUE_MERCHANT_ID={created.key.merchant_id}")
        print(f"ACCRUE_API_KEY_ID={created.key.key_id}")
        print(f"ACCRUE_API_KEY={created.secret}")
    elif args.command == "key" and args.action == "revoke":
        revoked = merchants.revoke_api_key_sync(_gateway_database_url(), args.key)
        print(f"revoked {revoked.key_id} ({revoked.prefix}...) of {revoked.merchant_id} at {when(revoked.revoked_at)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "dead-letters":
            sys.exit(dead_letters.run(args, (*registry.SERVICES, *registry.WORKERS)))
        _merchants(parser, args)
    except DomainError as err:
        sys.exit(f"accrue: {err.message} ({err.reason})")


if __name__ == "__main__":
    main()
