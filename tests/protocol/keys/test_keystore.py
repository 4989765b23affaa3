import json
import os
import stat

import pytest

from thinkmesh.protocol.cli.main import main
from thinkmesh.protocol.keys.keystore import KeystoreError, create_keys, read_binding, unlock_keys


def test_create_unlock_round_trip(tmp_path):
    keys = create_keys(tmp_path / "k", "pw", kdf="light")
    again = unlock_keys(tmp_path / "k", "pw")
    assert again.identity.public_key == keys.identity.public_key
    assert again.evm_private_key == keys.evm_private_key
    assert read_binding(tmp_path / "k") == keys.binding
    for name in ("identity.json", "evm.json", "binding.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "k" / name).st_mode) == 0o600


def test_secrets_are_not_in_any_file_in_clear(tmp_path):
    keys = create_keys(tmp_path / "k", "pw", kdf="light")
    blob = "".join((tmp_path / "k" / n).read_text() for n in os.listdir(tmp_path / "k"))
    assert keys.identity.seed().hex() not in blob
    assert keys.evm_private_key.hex() not in blob


def test_wrong_password_and_tampering_are_clear_errors(tmp_path):
    create_keys(tmp_path / "k", "pw", kdf="light")
    with pytest.raises(KeystoreError, match="wrong password"):
        unlock_keys(tmp_path / "k", "nope")
    doc = json.loads((tmp_path / "k" / "binding.json").read_text())
    doc["evm_address"] = "0x" + "22" * 20
    (tmp_path / "k" / "binding.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="binding"):
        unlock_keys(tmp_path / "k", "pw")


def test_refuses_to_overwrite_and_to_use_an_empty_password(tmp_path):
    create_keys(tmp_path / "k", "pw", kdf="light")
    with pytest.raises(KeystoreError, match="not overwriting"):
        create_keys(tmp_path / "k", "pw", kdf="light")
    with pytest.raises(KeystoreError, match="empty password"):
        create_keys(tmp_path / "j", "", kdf="light")


def test_cli_new_and_show_never_print_private_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", "pw")
    assert main(["keys", "new", "--dir", str(tmp_path / "k"), "--kdf", "light"]) == 0
    created = capsys.readouterr().out
    assert main(["keys", "show", "--dir", str(tmp_path / "k"), "--unlock"]) == 0
    shown = capsys.readouterr().out
    keys = unlock_keys(tmp_path / "k", "pw")
    for out in (created, shown):
        assert keys.identity.peer_id in out and keys.evm_address in out
        assert keys.identity.seed().hex() not in out and keys.evm_private_key.hex() not in out
    assert "opens both keys" in shown


def test_cli_reports_missing_keys_without_a_traceback(tmp_path, capsys):
    assert main(["keys", "show", "--dir", str(tmp_path / "none")]) == 1
    assert "thinkmesh keys new" in capsys.readouterr().err
