"""Encrypted key files for a node's two keys, and the public binding between them.

A key directory holds:
  identity.json  the Ed25519 seed, encrypted with argon2id + XSalsa20-Poly1305 (pynacl)
  evm.json       the EVM account, a standard Web3 Secret Storage (v3) file from eth-account,
                 usable by any Ethereum wallet
  binding.json   the public `IdentityBinding` (no secrets)
Files are written with mode 0600 through a temporary file and a rename, so a crash never leaves a
half-written key. The password comes from THINKMESH_KEY_PASSWORD, a password file, or a prompt.

A key file names its own KDF parameters, and a key file can come from anywhere (a backup, a
wallet): before deriving anything, `check_kdf_parameters` refuses parameters that would take more
than `MAX_KDF_MEMORY` bytes or minutes of work, so opening a hostile file costs seconds at most.
The bounds are four times the "standard" profile's cost, with the memory capped at 1 GiB.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
from eth_account import Account

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.identity import IdentityBinding, NodeIdentity, bind_identity, verify_binding
from thinkmesh.protocol.runtime.atomic_files import PRIVATE_MODE, write_atomic
from thinkmesh.protocol.runtime.process_lifecycle import PASSWORD_ENV

HOME_ENV = "THINKMESH_HOME"
IDENTITY_FILE = "identity.json"
EVM_FILE = "evm.json"
BINDING_FILE = "binding.json"
# "light" is for devnets and tests, where many keys are made and unlocked on a small machine.
KDF_PROFILES = {
    "standard": {"argon2_ops": nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
                 "argon2_mem": nacl.pwhash.argon2id.MEMLIMIT_MODERATE, "scrypt_n": 262144},
    "light": {"argon2_ops": nacl.pwhash.argon2id.OPSLIMIT_MIN,
              "argon2_mem": nacl.pwhash.argon2id.MEMLIMIT_MIN, "scrypt_n": 1024},
}


MAX_KDF_MEMORY = 1 << 30  # bytes a KDF may ask for: argon2id memlimit, scrypt 128 * n * r
MAX_ARGON2_WORK = 4 * nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE  # opslimit * memlimit (bytes passed over)
MAX_SCRYPT_WORK = 4 * 262144 * 8  # n * r * p: four times the standard profile's
MAX_PBKDF2_ROUNDS = 4_000_000  # four times eth-account's default
KEY_LENGTHS = range(32, 65)  # dklen of a Web3 Secret Storage file: 32 is what wallets write


class KeystoreError(ProtocolError):
    """A key file that is missing, malformed, or does not open with the given password."""


def check_kdf_parameters(identity_doc: dict, evm_doc: dict, where: Path) -> None:
    """Raises `KeystoreError` naming the file and the parameter when either file's KDF would need
    more than `MAX_KDF_MEMORY` bytes or more work than the bounds above; derives nothing."""
    crypto = identity_doc.get("crypto") if isinstance(identity_doc, dict) else None
    if not isinstance(crypto, dict) or crypto.get("kdf", "argon2id") != "argon2id":
        raise KeystoreError(f"{Path(where) / IDENTITY_FILE}: expected an argon2id-encrypted seed")
    path = Path(where) / IDENTITY_FILE
    ops, mem = _integer(crypto, "opslimit", path), _integer(crypto, "memlimit", path)
    if not nacl.pwhash.argon2id.OPSLIMIT_MIN <= ops or not nacl.pwhash.argon2id.MEMLIMIT_MIN <= mem:
        raise KeystoreError(f"{path}: argon2id opslimit {ops} / memlimit {mem} are below libsodium's minimums")
    _bound(path, "argon2id memlimit", mem, MAX_KDF_MEMORY, " bytes")
    _bound(path, "argon2id opslimit x memlimit", ops * mem, MAX_ARGON2_WORK, " bytes passed over")

    path = Path(where) / EVM_FILE
    evm_crypto = evm_doc.get("crypto", evm_doc.get("Crypto")) if isinstance(evm_doc, dict) else None
    params = evm_crypto.get("kdfparams") if isinstance(evm_crypto, dict) else None
    if not isinstance(params, dict):
        raise KeystoreError(f"{path}: malformed key file (no crypto.kdfparams)")
    kdf = evm_crypto.get("kdf")
    dklen = _integer(params, "dklen", path)
    if dklen not in KEY_LENGTHS:
        raise KeystoreError(f"{path}: dklen {dklen}, expected {KEY_LENGTHS.start}..{KEY_LENGTHS.stop - 1}")
    if kdf == "scrypt":
        n, r, p = (_integer(params, name, path) for name in ("n", "r", "p"))
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise KeystoreError(f"{path}: scrypt n={n}, r={r}, p={p}: n must be a power of two above 1, r and p positive")
        _bound(path, "scrypt memory (128 * n * r)", 128 * n * r, MAX_KDF_MEMORY, " bytes")
        _bound(path, "scrypt work (n * r * p)", n * r * p, MAX_SCRYPT_WORK)
    elif kdf == "pbkdf2":
        rounds = _integer(params, "c", path)
        if params.get("prf") != "hmac-sha256" or rounds < 1:
            raise KeystoreError(f"{path}: pbkdf2 with prf {params.get('prf')!r} and c={rounds} is not a valid key file")
        _bound(path, "pbkdf2 rounds (c)", rounds, MAX_PBKDF2_ROUNDS)
    else:
        raise KeystoreError(f"{path}: KDF {kdf!r} is not one a key file may use (expected scrypt or pbkdf2)")


def _integer(params: dict, name: str, path: Path) -> int:
    value = params.get(name)
    if type(value) is not int:  # noqa: E721 -- bool is an int, and JSON floats are not counts
        raise KeystoreError(f"{path}: KDF parameter {name!r} must be an integer, got {value!r}")
    return value


def _bound(path: Path, what: str, value: int, limit: int, unit: str = "") -> None:
    if value > limit:
        raise KeystoreError(f"{path}: {what} is {value:,}{unit}, above the {limit:,}{unit} this keystore accepts "
                            "(opening it would take minutes or gigabytes); refusing the file")


@dataclass(frozen=True)
class UnlockedKeys:
    identity: NodeIdentity
    evm_private_key: bytes
    binding: IdentityBinding

    @property
    def evm_address(self) -> str:
        return self.binding.evm_address

    def __repr__(self) -> str:
        return f"UnlockedKeys(peer_id={self.identity.peer_id}, evm={self.evm_address})"


def default_key_dir(name: str = "default") -> Path:
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".thinkmesh"))
    return home / "keys" / name


def _encrypt_seed(seed: bytes, password: str, profile: dict) -> dict:
    salt = secrets.token_bytes(nacl.pwhash.argon2id.SALTBYTES)
    key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt,
        opslimit=profile["argon2_ops"], memlimit=profile["argon2_mem"],
    )
    box = nacl.secret.SecretBox(key).encrypt(seed)
    return {"kdf": "argon2id", "opslimit": profile["argon2_ops"], "memlimit": profile["argon2_mem"],
            "salt": salt.hex(), "box": box.hex()}


def _decrypt_seed(crypto: dict, password: str, path: Path) -> bytes:
    try:
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, password.encode(), bytes.fromhex(crypto["salt"]),
            opslimit=int(crypto["opslimit"]), memlimit=int(crypto["memlimit"]),
        )
        return nacl.secret.SecretBox(key).decrypt(bytes.fromhex(crypto["box"]))
    except nacl.exceptions.CryptoError as exc:
        raise KeystoreError(f"{path}: wrong password (or the file was altered)") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise KeystoreError(f"{path}: malformed identity file ({exc})") from exc


def create_keys(key_dir: Path, password: str, kdf: str = "standard", overwrite: bool = False) -> UnlockedKeys:
    """Makes a fresh Ed25519 identity and EVM account in `key_dir`; refuses to overwrite keys."""
    if kdf not in KDF_PROFILES:
        raise KeystoreError(f"kdf must be one of {sorted(KDF_PROFILES)}, got {kdf!r}")
    if not password:
        raise KeystoreError("refusing to encrypt keys with an empty password")
    key_dir = Path(key_dir)
    if (key_dir / IDENTITY_FILE).exists() and not overwrite:
        raise KeystoreError(f"{key_dir} already holds an identity; not overwriting it")
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = NodeIdentity.generate()
    account = Account.create()
    profile = KDF_PROFILES[kdf]
    binding = bind_identity(identity, bytes(account.key))
    identity_doc = {"version": 1, "kind": "thinkmesh-ed25519", "peer_id": identity.peer_id,
                    "public_key": identity.public_key.hex(),
                    "crypto": _encrypt_seed(identity.seed(), password, profile)}
    evm_doc = Account.encrypt(account.key, password, kdf="scrypt", iterations=profile["scrypt_n"])
    write_atomic(key_dir / IDENTITY_FILE, json.dumps(identity_doc, indent=1), mode=PRIVATE_MODE)
    write_atomic(key_dir / EVM_FILE, json.dumps(evm_doc), mode=PRIVATE_MODE)
    write_atomic(key_dir / BINDING_FILE, json.dumps(binding_to_json(binding), indent=1), mode=PRIVATE_MODE)
    return UnlockedKeys(identity, bytes(account.key), binding)


def read_binding(key_dir: Path) -> IdentityBinding:
    """The public side of a key directory; needs no password."""
    path = Path(key_dir) / BINDING_FILE
    try:
        binding = binding_from_json(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise KeystoreError(f"no keys in {key_dir} (run `thinkmesh keys new`)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"{path}: malformed binding file ({exc})") from exc
    verify_binding(binding)
    return binding


def unlock_keys(key_dir: Path, password: str) -> UnlockedKeys:
    key_dir = Path(key_dir)
    binding = read_binding(key_dir)
    try:
        identity_doc = json.loads((key_dir / IDENTITY_FILE).read_text())
        evm_doc = json.loads((key_dir / EVM_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read keys in {key_dir}: {exc}") from exc
    return unlock_documents(identity_doc, evm_doc, binding, password, key_dir)


def unlock_documents(identity_doc: dict, evm_doc: dict, binding: IdentityBinding, password: str,
                     where: Path) -> UnlockedKeys:
    """Opens an identity file's and an EVM key file's contents (as parsed JSON) with `password`."""
    if not isinstance(identity_doc, dict) or not isinstance(evm_doc, dict):
        raise KeystoreError(f"{where}: malformed key files (expected JSON objects)")
    check_kdf_parameters(identity_doc, evm_doc, Path(where))
    identity_path = Path(where) / IDENTITY_FILE
    identity = NodeIdentity.from_seed(_decrypt_seed(identity_doc.get("crypto", {}), password, identity_path))
    try:
        evm_key = bytes(Account.decrypt(evm_doc, password))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"{Path(where) / EVM_FILE}: wrong password (or the file was altered)") from exc
    if identity.public_key != binding.ed25519_public_key or Account.from_key(evm_key).address != binding.evm_address:
        raise KeystoreError(f"{where}: the keys do not match {BINDING_FILE}")
    return UnlockedKeys(identity, evm_key, binding)


def binding_to_json(binding: IdentityBinding) -> dict:
    return {"ed25519_public_key": binding.ed25519_public_key.hex(), "evm_address": binding.evm_address,
            "ed25519_signature": binding.ed25519_signature.hex(), "evm_signature": binding.evm_signature.hex()}


def binding_from_json(doc: dict) -> IdentityBinding:
    return IdentityBinding(
        ed25519_public_key=bytes.fromhex(doc["ed25519_public_key"]),
        evm_address=str(doc["evm_address"]),
        ed25519_signature=bytes.fromhex(doc["ed25519_signature"]),
        evm_signature=bytes.fromhex(doc["evm_signature"]),
    )


def resolve_password(password_file: str | None, confirm: bool = False) -> str:
    """The password file when one is given, else THINKMESH_KEY_PASSWORD, else an interactive prompt."""
    if password_file:
        try:
            return Path(password_file).read_text().rstrip("\n")
        except OSError as exc:
            raise KeystoreError(f"cannot read password file {password_file}: {exc}") from exc
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    import getpass
    import sys

    if not sys.stdin.isatty():
        raise KeystoreError(f"no password: set {PASSWORD_ENV} or pass --password-file")
    password = getpass.getpass("key password: ")
    if confirm and getpass.getpass("repeat password: ") != password:
        raise KeystoreError("the two passwords differ")
    return password
