"""The `thinkmesh` subcommands that need only the protocol layer: keys and the self-check."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds this layer's subcommands; each sets `handler=` to a function of the parsed args."""
    keys = subparsers.add_parser("keys", help="create, inspect, back up and restore node identities")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    new = keys_sub.add_parser("new", help="make an Ed25519 identity and an EVM account, encrypted")
    _key_dir_args(new)
    new.add_argument("--kdf", choices=("standard", "light"), default="standard",
                     help="key-derivation cost; 'light' only for devnets and tests")
    new.add_argument("--force", action="store_true", help="overwrite existing keys in the directory")
    new.set_defaults(handler=_keys_new)

    show = keys_sub.add_parser("show", help="print the public identity (never a private key)")
    _key_dir_args(show)
    show.add_argument("--unlock", action="store_true", help="also check the password opens both keys")
    show.set_defaults(handler=_keys_show)

    backup = keys_sub.add_parser("backup", help="write the keys to one file (still encrypted; checks the password)")
    _key_dir_args(backup)
    backup.add_argument("--out", type=Path, required=True, help="backup file to create (never overwritten)")
    backup.set_defaults(handler=_keys_backup)

    restore = keys_sub.add_parser("restore", help="restore keys from a `keys backup` file")
    restore.add_argument("backup_file", type=Path, metavar="FILE", help="the backup file")
    _key_dir_args(restore)
    restore.add_argument("--force", action="store_true",
                         help="replace an identity already in the directory (its files are kept under replaced-*/)")
    restore.add_argument("--unlock", action="store_true", help="first check the password opens the backup")
    restore.set_defaults(handler=_keys_restore)

    check = subparsers.add_parser("selfcheck", help="run the protocol's worked examples and report")
    check.set_defaults(handler=_selfcheck)


def _key_dir_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="default", help="key set name under $THINKMESH_HOME/keys")
    parser.add_argument("--dir", "--key-dir", dest="dir", type=Path, help="key directory (overrides --name)")
    parser.add_argument("--password-file", help="file holding the password (else $THINKMESH_KEY_PASSWORD or a prompt)")


def _resolve_dir(args: argparse.Namespace) -> Path:
    from thinkmesh.protocol.keys.keystore import default_key_dir

    return args.dir if args.dir else default_key_dir(args.name)


def _print_identity(key_dir: Path, binding) -> None:
    from thinkmesh.protocol.rules.identity import peer_id_from_public_key

    print(f"key directory   {key_dir}")
    print(f"peer id         {peer_id_from_public_key(binding.ed25519_public_key)}")
    print(f"ed25519 key     0x{binding.ed25519_public_key.hex()}")
    print(f"evm address     {binding.evm_address}")
    print("binding         valid (each key signed the other)")


def _keys_new(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.keys.keystore import create_keys, resolve_password

    key_dir = _resolve_dir(args)
    password = resolve_password(args.password_file, confirm=True)
    keys = create_keys(key_dir, password, kdf=args.kdf, overwrite=args.force)
    _print_identity(key_dir, keys.binding)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.keys.keystore import read_binding, resolve_password, unlock_keys

    key_dir = _resolve_dir(args)
    binding = read_binding(key_dir)
    if args.unlock:
        unlock_keys(key_dir, resolve_password(args.password_file))
    _print_identity(key_dir, binding)
    if args.unlock:
        print("password        opens both keys")
    return 0


def _keys_backup(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.keys.backup import backup_keys
    from thinkmesh.protocol.keys.keystore import resolve_password

    key_dir = _resolve_dir(args)
    backup = backup_keys(key_dir, args.out, resolve_password(args.password_file))
    print(f"backed up       {key_dir} -> {args.out}")
    print(f"peer id         {backup.peer_id}")
    print(f"evm address     {backup.evm_address}")
    print("secrets         still encrypted with the key password: keep the password apart from this file")
    return 0


def _keys_restore(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.keys.backup import restore_keys
    from thinkmesh.protocol.keys.keystore import resolve_password

    key_dir = _resolve_dir(args)
    password = resolve_password(args.password_file) if args.unlock else None
    backup = restore_keys(args.backup_file, key_dir, force=args.force, password=password)
    print(f"restored        {args.backup_file} (checksum and binding verified)")
    _print_identity(key_dir, backup.binding)
    if args.unlock:
        print("password        opens both keys")
    return 0


def _selfcheck(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.cli.selfcheck import run_selfcheck

    failures = run_selfcheck(print)
    return 1 if failures else 0
