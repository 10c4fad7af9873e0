"""``python -m src.auth keys create|list|revoke`` and ``users add|list|remove`` (docs/security.md).

The file is serve.auth.credentials_file (env AUTH_FILE, or --file). A new key is
printed once on stdout and never stored; a running service picks up every change
within a second. Exit codes: 0 done; 2 a wrong argument or an unusable file.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from src.auth.store import SCOPES, CredentialsError, create_key, load, remove_user, revoke_key, set_user
from src.auth.throttle import check_rate
from src.common import setup_logging
from src.config import ConfigError, env, load_settings

log = logging.getLogger("src.auth")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.auth", description=__doc__.splitlines()[0])
    p.add_argument("--file", type=Path, help="credentials file (default: $AUTH_FILE, else "
                                             "serve.auth.credentials_file)")
    what = p.add_subparsers(dest="what", required=True)
    keys = what.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what uses it (e.g. loan-origination)")
    create.add_argument("--scope", choices=SCOPES, default="score")
    create.add_argument("--rate-limit", help="this key's own limit, e.g. 100/second (default: "
                                             "serve.auth.rate_limit)")
    keys.add_parser("list", help="the keys (never the secrets)")
    revoke = keys.add_parser("revoke", help="stop a key working (kept in the list, marked revoked)")
    revoke.add_argument("key_id")
    users = what.add_parser("users", help="people who sign in to the web pages").add_subparsers(
        dest="action", required=True)
    add = users.add_parser("add", help="add a user, or set an existing user's password and scope")
    add.add_argument("name")
    add.add_argument("--scope", choices=SCOPES, default="score")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin "
                                                                   "(else asked twice)")
    users.add_parser("list", help="the users")
    remove = users.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name")
    return p


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CredentialsError("the two passwords differ")
    return first


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace, path: Path) -> str:
    """Do what ``args`` say to the file at ``path``; the text for stdout."""
    if args.what == "keys" and args.action == "create":
        rate_limit = check_rate(args.rate_limit, "--rate-limit") if args.rate_limit else None
        raw, key = create_key(path, args.name, args.scope, rate_limit)
        log.info("key %s (%s, scope %s) added to %s; it is shown once, below", key.id, key.name, key.scope, path)
        return raw
    if args.what == "keys" and args.action == "revoke":
        key = revoke_key(path, args.key_id)
        log.info("key %s (%s) revoked at %s", key.id, key.name, key.revoked)
        return ""
    if args.what == "users" and args.action == "add":
        user = set_user(path, args.name, _password(args.password_stdin), args.scope)
        log.info("user %s (scope %s) saved in %s", user.name, user.scope, path)
        return ""
    if args.what == "users" and args.action == "remove":
        remove_user(path, args.name)
        log.info("user %s removed", args.name)
        return ""
    creds = load(path)
    if args.what == "keys":
        rows = [[k.id, k.name, k.scope, k.rate_limit or "default", k.created, f"revoked {k.revoked}"
                 if k.revoked else "live"] for k in sorted(creds.keys.values(), key=lambda k: k.created)]
        return _table([["id", "name", "scope", "rate limit", "created", "state"], *rows]) if rows else "no keys"
    rows = [[u.name, u.scope, u.created] for u in sorted(creds.users.values(), key=lambda u: u.name)]
    return _table([["user", "scope", "created"], *rows]) if rows else "no users"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parser().parse_args(argv)
    try:
        path = args.file or env.credentials_file(load_settings(env.params_file()))
        out = run(args, path)
    except (CredentialsError, ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if out:
        sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
