"""One-file backups of a key directory, and their restore.

A backup holds the key directory's three files as they are: the Ed25519 seed and the EVM key stay
encrypted under the keystore password (argon2id / scrypt), the binding is public. So the backup
holds no secret in clear, and it restores byte for byte. A SHA-256 over the files catches a
truncated or altered copy, and the binding's two signatures plus the public keys in the encrypted
files must all name the same PeerID and EVM address before anything is written. The files' KDF
parameters must be within the keystore's bounds (`keystore.check_kdf_parameters`): a backup that
would take minutes or gigabytes to open is refused before it is restored.

    {"format": "thinkmesh-key-backup", "version": 1, "peer_id": ..., "evm_address": ...,
     "created": ..., "files": {"identity.json": text, "evm.json": text, "binding.json": text},
     "sha256": hex of the canonical JSON of "files"}
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.identity import IdentityBinding, peer_id_from_public_key, verify_binding
from thinkmesh.protocol.keys.keystore import (
    BINDING_FILE,
    EVM_FILE,
    IDENTITY_FILE,
    KeystoreError,
    binding_from_json,
    check_kdf_parameters,
    read_binding,
    unlock_documents,
    unlock_keys,
)
from thinkmesh.protocol.runtime.atomic_files import PRIVATE_MODE, fsync_directory, write_atomic

BACKUP_FORMAT = "thinkmesh-key-backup"
BACKUP_VERSION = 1
KEY_FILES = (IDENTITY_FILE, EVM_FILE, BINDING_FILE)


@dataclass(frozen=True)
class KeyBackup:
    """A parsed, checked backup: the binding holds and every file names the same two keys."""

    files: dict[str, str]
    binding: IdentityBinding

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.binding.ed25519_public_key)

    @property
    def evm_address(self) -> str:
        return self.binding.evm_address


def files_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def backup_keys(key_dir: Path, out: Path, password: str) -> KeyBackup:
    """Writes `key_dir`'s keys to `out` (mode 0600) after checking `password` opens them.

    Refuses to overwrite `out`: an older backup may be the only copy of another identity.
    """
    key_dir, out = Path(key_dir), Path(out)
    if out.exists():
        raise KeystoreError(f"{out} already exists; not overwriting a backup (choose another --out)")
    keys = unlock_keys(key_dir, password)
    files = {name: (key_dir / name).read_text() for name in KEY_FILES}
    backup = check_backup_files(files, where=key_dir)
    if backup.binding != keys.binding:
        raise KeystoreError(f"{key_dir} changed while it was being backed up; try again")
    doc = {"format": BACKUP_FORMAT, "version": BACKUP_VERSION, "peer_id": backup.peer_id,
           "evm_address": backup.evm_address, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "files": files, "sha256": files_digest(files)}
    try:
        write_atomic(out, json.dumps(doc, indent=1) + "\n", mode=PRIVATE_MODE, exclusive=True)
    except FileExistsError as exc:
        raise KeystoreError(f"{out} already exists; not overwriting a backup") from exc
    return backup


def read_backup(path: Path) -> KeyBackup:
    """Parses and checks a backup file; raises `KeystoreError` saying what is wrong with it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeystoreError(f"no backup file at {path}") from exc
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"{path}: not a readable key backup ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT:
        raise KeystoreError(f"{path}: expected a {BACKUP_FORMAT} file, got format {_field(doc, 'format')!r}")
    if doc.get("version") != BACKUP_VERSION:
        raise KeystoreError(f"{path}: expected backup version {BACKUP_VERSION}, got {doc.get('version')!r}")
    files = doc.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(KEY_FILES) or not all(
        isinstance(text, str) for text in files.values()
    ):
        raise KeystoreError(f"{path}: expected the files {', '.join(KEY_FILES)} in the backup")
    if files_digest(files) != doc.get("sha256"):
        raise KeystoreError(f"{path}: checksum mismatch: the backup was truncated or altered")
    backup = check_backup_files(files, where=path)
    if (doc.get("peer_id"), doc.get("evm_address")) != (backup.peer_id, backup.evm_address):
        raise KeystoreError(f"{path}: its header names {doc.get('peer_id')} / {doc.get('evm_address')}, "
                            f"its keys are {backup.peer_id} / {backup.evm_address}")
    return backup


def check_backup_files(files: dict[str, str], *, where: Path) -> KeyBackup:
    """The binding verifies, and the encrypted files' public parts name the binding's two keys."""
    try:
        binding = binding_from_json(json.loads(files[BINDING_FILE]))
        identity_doc = json.loads(files[IDENTITY_FILE])
        evm_doc = json.loads(files[EVM_FILE])
        verify_binding(binding)
        identity_key = bytes.fromhex(identity_doc["public_key"])
        evm_address = "0x" + str(evm_doc["address"]).lower().removeprefix("0x")
    except (ProtocolError, ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"{where}: malformed or unverifiable key files ({exc})") from exc
    if identity_key != binding.ed25519_public_key or evm_address != binding.evm_address.lower():
        raise KeystoreError(f"{where}: the encrypted keys do not match {BINDING_FILE}")
    check_kdf_parameters(identity_doc, evm_doc, Path(where))
    return KeyBackup(dict(files), binding)


def restore_keys(backup_file: Path, key_dir: Path, *, force: bool = False, password: str | None = None) -> KeyBackup:
    """Writes a backup's keys into `key_dir`.

    Refuses when `key_dir` already holds an identity unless `force`; even then the replaced files are
    kept under `key_dir/replaced-<time>/`. With `password`, first checks that it opens the backup.
    """
    backup = read_backup(backup_file)
    key_dir = Path(key_dir)
    if password is not None:
        unlock_documents(json.loads(backup.files[IDENTITY_FILE]), json.loads(backup.files[EVM_FILE]),
                         backup.binding, password, Path(backup_file))
    if (key_dir / IDENTITY_FILE).exists():
        current = _describe(key_dir)
        if not force:
            raise KeystoreError(f"{key_dir} already holds identity {current}; not overwriting it "
                                "(restore elsewhere with --dir, or pass --force to replace it)")
        _set_aside(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in (IDENTITY_FILE, EVM_FILE, BINDING_FILE):  # the binding last: a torn restore fails to unlock
        write_atomic(key_dir / name, backup.files[name], mode=PRIVATE_MODE)
    return backup


def _describe(key_dir: Path) -> str:
    try:
        binding = read_binding(key_dir)
    except ProtocolError:
        return "(unreadable)"
    return f"{peer_id_from_public_key(binding.ed25519_public_key)} / {binding.evm_address}"


def _set_aside(key_dir: Path) -> Path:
    aside = key_dir / f"replaced-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    aside.mkdir(mode=0o700)
    for name in KEY_FILES:
        if (key_dir / name).exists():
            os.replace(key_dir / name, aside / name)
    fsync_directory(aside)
    fsync_directory(key_dir)
    return aside


def _field(doc: object, name: str) -> object:
    return doc.get(name) if isinstance(doc, dict) else None
