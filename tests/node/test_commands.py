"""The README's path: `thinkmesh model init DIR`, then `thinkmesh model coldstart DIR` twice."""

import pytest

from thinkmesh.protocol.cli.main import main


@pytest.mark.timeout(120)
def test_model_init_then_coldstart_twice_reports_a_cache_hit(tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    assert main(["model", "init", model_dir, "--hidden-size", "32", "--heads", "2", "--kv-heads", "1",
                 "--layers", "1", "--intermediate-size", "64"]) == 0
    assert "parameters written" in capsys.readouterr().out
    assert main(["model", "init", model_dir]) == 1  # refuses to overwrite without --force
    assert "--force" in capsys.readouterr().err
    args = ["model", "coldstart", model_dir, "--families", "arithmetic", "--examples", "16", "--batch-size", "16"]
    assert main(args) == 0
    assert "done in" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cache hit" in out and "nothing to do" in out


def test_unknown_task_family_is_a_clean_error(tmp_path, capsys):
    assert main(["model", "coldstart", str(tmp_path), "--families", "chess"]) == 1
    assert "task family" in capsys.readouterr().err


def test_teacher_slip_rate_out_of_range_is_a_clean_error(tmp_path, capsys):
    assert main(["model", "coldstart", str(tmp_path), "--families", "linear", "--teacher-slip-rate", "1.5"]) == 1
    assert "teacher_slip_rate" in capsys.readouterr().err
