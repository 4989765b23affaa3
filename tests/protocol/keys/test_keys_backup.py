"""`thinkmesh keys backup|restore`: one encrypted file, checked before anything is written."""

import json
import os
import stat

import pytest

from thinkmesh.protocol.cli.main import main
from thinkmesh.protocol.keys.backup import backup_keys, files_digest, read_backup, restore_keys
from thinkmesh.protocol.keys.keystore import KeystoreError, create_keys, unlock_keys


@pytest.fixture
def keys(tmp_path):
    return create_keys(tmp_path / "k", "pw", kdf="light")


def test_cli_backup_restore_round_trip(tmp_path, keys, capsys, monkeypatch):
    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", "pw")
    out = tmp_path / "node.backup"
    assert main(["keys", "backup", "--key-dir", str(tmp_path / "k"), "--out", str(out)]) == 0
    backed = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    assert keys.identity.seed().hex() not in text and keys.evm_private_key.hex() not in text
    assert main(["keys", "restore", str(out), "--key-dir", str(tmp_path / "restored"), "--unlock"]) == 0
    restored_out = capsys.readouterr().out
    for printed in (backed, restored_out):
        assert keys.identity.peer_id in printed and keys.evm_address in printed
        assert keys.identity.seed().hex() not in printed and keys.evm_private_key.hex() not in printed
    restored = unlock_keys(tmp_path / "restored", "pw")
    assert restored.identity.seed() == keys.identity.seed()
    assert restored.evm_private_key == keys.evm_private_key
    for name in ("identity.json", "evm.json", "binding.json"):
        assert (tmp_path / "restored" / name).read_bytes() == (tmp_path / "k" / name).read_bytes()
        assert stat.S_IMODE(os.stat(tmp_path / "restored" / name).st_mode) == 0o600


def test_backup_checks_the_password_and_never_overwrites(tmp_path, keys):
    out = tmp_path / "b.json"
    with pytest.raises(KeystoreError, match="wrong password"):
        backup_keys(tmp_path / "k", out, "nope")
    assert not out.exists()
    backup_keys(tmp_path / "k", out, "pw")
    before = out.read_bytes()
    with pytest.raises(KeystoreError, match="not overwriting"):
        backup_keys(tmp_path / "k", out, "pw")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_restore_refuses_an_existing_identity_unless_forced_and_keeps_the_old_one(tmp_path, keys):
    backup_keys(tmp_path / "k", tmp_path / "b.json", "pw")
    other = create_keys(tmp_path / "other", "pw2", kdf="light")
    with pytest.raises(KeystoreError, match=f"already holds identity {other.identity.peer_id}"):
        restore_keys(tmp_path / "b.json", tmp_path / "other")
    assert unlock_keys(tmp_path / "other", "pw2").identity.peer_id == other.identity.peer_id
    with pytest.raises(KeystoreError, match="wrong password"):
        restore_keys(tmp_path / "b.json", tmp_path / "other", force=True, password="pw2")
    restore_keys(tmp_path / "b.json", tmp_path / "other", force=True, password="pw")
    assert unlock_keys(tmp_path / "other", "pw").identity.peer_id == keys.identity.peer_id
    (aside,) = [p for p in (tmp_path / "other").iterdir() if p.name.startswith("replaced-")]
    assert unlock_keys(aside, "pw2").identity.peer_id == other.identity.peer_id


def test_restore_rejects_altered_or_mismatched_backups_and_writes_nothing(tmp_path, keys):
    backup_keys(tmp_path / "k", tmp_path / "b.json", "pw")
    doc = json.loads((tmp_path / "b.json").read_text())

    truncated = dict(doc, files={**doc["files"], "evm.json": doc["files"]["evm.json"][:-10]})
    (tmp_path / "t.json").write_text(json.dumps(truncated))
    with pytest.raises(KeystoreError, match="checksum mismatch"):
        restore_keys(tmp_path / "t.json", tmp_path / "dest")

    stranger = create_keys(tmp_path / "s", "pw", kdf="light")
    files = {**doc["files"], "binding.json": (tmp_path / "s" / "binding.json").read_text()}
    swapped = dict(doc, files=files, sha256=files_digest(files))  # a consistent checksum over mixed keys
    (tmp_path / "m.json").write_text(json.dumps(swapped))
    with pytest.raises(KeystoreError, match="do not match"):
        restore_keys(tmp_path / "m.json", tmp_path / "dest")
    assert read_backup(tmp_path / "b.json").peer_id == keys.identity.peer_id != stranger.identity.peer_id

    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="not a readable key backup"):
        restore_keys(tmp_path / "x.json", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_cli_restore_refusal_is_a_clear_error_without_traceback(tmp_path, keys, capsys):
    backup_keys(tmp_path / "k", tmp_path / "b.json", "pw")
    assert main(["keys", "restore", str(tmp_path / "b.json"), "--dir", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err
    assert "already holds identity" in err and "--force" in err and "Traceback" not in err


def _backup_with(tmp_path, name: str, edit) -> "os.PathLike":
    """A backup of the `keys` fixture whose parsed key files `edit(identity_doc, evm_doc)` changed,
    with the checksum made to match again (as a hostile backup's would)."""
    backup_keys(tmp_path / "k", tmp_path / f"{name}.orig", "pw")
    doc = json.loads((tmp_path / f"{name}.orig").read_text())
    identity_doc, evm_doc = json.loads(doc["files"]["identity.json"]), json.loads(doc["files"]["evm.json"])
    edit(identity_doc, evm_doc)
    doc["files"]["identity.json"], doc["files"]["evm.json"] = json.dumps(identity_doc), json.dumps(evm_doc)
    doc["sha256"] = files_digest(doc["files"])
    path = tmp_path / f"{name}.backup"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("name, edit, message", [
    ("scrypt-memory", lambda i, e: e["crypto"]["kdfparams"].update(n=2**24, r=8),
     r"evm.json: scrypt memory \(128 \* n \* r\) is 17,179,869,184 bytes, above the 1,073,741,824 bytes"),
    ("scrypt-work", lambda i, e: e["crypto"]["kdfparams"].update(n=2**16, r=8, p=64),
     r"scrypt work \(n \* r \* p\) is 33,554,432, above the 8,388,608"),
    ("scrypt-n", lambda i, e: e["crypto"]["kdfparams"].update(n=1000),
     r"scrypt n=1000, r=8, p=1: n must be a power of two"),
    ("argon2-memory", lambda i, e: i["crypto"].update(memlimit=8 << 30),
     r"identity.json: argon2id memlimit is 8,589,934,592 bytes, above the 1,073,741,824 bytes"),
    ("argon2-work", lambda i, e: i["crypto"].update(opslimit=4096, memlimit=1 << 28),
     r"argon2id opslimit x memlimit is 1,099,511,627,776 bytes passed over"),
    ("pbkdf2", lambda i, e: e["crypto"].update(kdf="pbkdf2", kdfparams={"c": 10**9, "dklen": 32, "prf": "hmac-sha256",
                                                                          "salt": "00"}),
     r"pbkdf2 rounds \(c\) is 1,000,000,000, above the 4,000,000"),
    ("not-an-integer", lambda i, e: e["crypto"]["kdfparams"].update(n=1e30),
     r"KDF parameter 'n' must be an integer, got 1e\+30"),
    ("unknown-kdf", lambda i, e: e["crypto"].update(kdf="bcrypt"),
     r"KDF 'bcrypt' is not one a key file may use"),
])
def test_restore_refuses_kdf_parameters_that_would_take_minutes_or_gigabytes(tmp_path, keys, name, edit, message):
    import time

    backup = _backup_with(tmp_path, name, edit)
    started = time.monotonic()
    with pytest.raises(KeystoreError, match=message):
        restore_keys(backup, tmp_path / "restored", password="pw")
    with pytest.raises(KeystoreError, match=message):  # without --unlock too: nothing is written
        restore_keys(backup, tmp_path / "restored")
    assert time.monotonic() - started < 2.0  # refused from the parameters, before any derivation
    assert not (tmp_path / "restored").exists()


def test_unlocking_a_key_dir_with_unbounded_kdf_parameters_is_refused_before_deriving(tmp_path, keys):
    path = tmp_path / "k" / "evm.json"
    evm = json.loads(path.read_text())
    evm["crypto"]["kdfparams"]["n"] = 2**30
    path.write_text(json.dumps(evm))
    with pytest.raises(KeystoreError, match="evm.json: scrypt memory"):
        unlock_keys(tmp_path / "k", "pw")
