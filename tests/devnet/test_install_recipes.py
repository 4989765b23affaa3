"""The Makefile's install recipes on a fresh machine, as root and as a sudo user, through fakes.

`make test` installs Debian's chromium through the `chromium` recipe when `chromium` is not on
PATH. As root that recipe once expanded an empty `$SUDO` in front of
`DEBIAN_FRONTEND=noninteractive apt-get ...`, which bash then ran as a command name, so
`make test` failed on a fresh root machine (a container without sudo).

Every make here runs with PATH holding only fakes (`apt-get`, `sudo`, `id`, `python3`, `npm`,
a venv's `python`, and `chromium` where a test says it is installed) and links to a few real
tools the recipes need (bash, env, touch, mkdir, ...): no real apt-get, sudo, pip or npm can
run. Each fake logs its argv, whether it came through the fake sudo and its DEBIAN_FRONTEND.
The fake `id` prints the simulated user's uid (0 or 1000); the fake sudo clears the
environment the way sudo's env_reset does and runs its command as uid 0; the fake apt-get
refuses to run unless `id -u` says 0, like the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKEFILE = REPO / "Makefile"
MAKE = shutil.which("make")
TIMEOUT_S = 60
ROOT, USER = 0, 1000
APT_INSTALL = ["install", "-y", "-q", "--no-install-recommends", "chromium"]
ERROR = "error: could not install chromium"

# Real tools the recipes and the fakes use; nothing else from the system is on PATH.
REAL_TOOLS = ("bash", "sh", "env", "touch", "mkdir", "chmod", "cat", "make")

pytestmark = pytest.mark.skipif(MAKE is None or shutil.which("bash") is None, reason="needs make and bash")

_LOG_LINE = 'printf "%s\\t%s\\t%s\\t%s\\n" "{tool}" "${{FAKE_VIA_SUDO:-0}}" "${{DEBIAN_FRONTEND-}}" "$*" >> "{log}"'


@dataclass(frozen=True)
class Call:
    tool: str
    via_sudo: bool
    frontend: str
    args: list[str]


@dataclass
class Sandbox:
    root: Path
    fakes: Path
    log: Path
    env: dict[str, str]

    def calls(self, *, include_id: bool = False) -> list[Call]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            tool, via_sudo, frontend, args = line.split("\t")
            if tool != "id" or include_id:
                out.append(Call(tool, via_sudo == "1", frontend, args.split()))
        return out

    def install_chromium(self) -> None:
        _script(self.fakes / "chromium", _LOG_LINE.format(tool="chromium", log=self.log))

    def make(self, *args: str, directory: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([MAKE, "-C", str(directory), "--no-print-directory", *args], env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def _sandbox(tmp_path: Path, *, uid: int, sudo: bool = True, update_rc: int = 0, install_rc: int = 0) -> Sandbox:
    fakes, real, log = tmp_path / "fakes", tmp_path / "real", tmp_path / "calls.log"
    fakes.mkdir()
    real.mkdir()
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run the recipes"
        (real / tool).symlink_to(found)

    def fake(tool: str, body: str) -> None:
        _script(fakes / tool, _LOG_LINE.format(tool=tool, log=log) + "\n" + body)

    fake("id", f'if [ "$1" = -u ]; then echo "${{FAKE_EUID:-{uid}}}"; else echo "uid=${{FAKE_EUID:-{uid}}}"; fi')
    if sudo:
        # env_reset: the command sees PATH and what sudo itself sets, nothing of the caller's environment.
        fake("sudo", 'exec env -i PATH="$PATH" FAKE_VIA_SUDO=1 FAKE_EUID=0 "$@"')
    fake("apt-get", f"""\
if [ "$(id -u)" != 0 ]; then echo "E: Could not open lock file - open (13: Permission denied)" >&2; exit 100; fi
case "$1" in
  update) exit {update_rc} ;;
  install)
    if [ {install_rc} != 0 ]; then echo "E: Unable to locate package chromium" >&2; exit {install_rc}; fi
    printf '#!/bin/bash\\n' > "{fakes}/chromium"; chmod +x "{fakes}/chromium" ;;
  *) exit 100 ;;
esac""")
    # A fresh machine's python3 and npm, for the whole install-test flow.
    venv_python = tmp_path / "venv-python"
    _script(venv_python, _LOG_LINE.format(tool="venv-python", log=log))
    fake("python3", f'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; '
                    f'cat "{venv_python}" > "$3/bin/python"; chmod +x "$3/bin/python"; fi')
    fake("npm", 'if [ "$1" = ci ]; then mkdir -p contracts/node_modules; fi')

    env = {"PATH": f"{fakes}:{real}", "HOME": str(tmp_path), "LANG": "C"}  # no MAKEFLAGS of an outer make
    return Sandbox(tmp_path, fakes, log, env)


def _fresh_checkout(tmp_path: Path) -> Path:
    """The Makefile and the files its install targets depend on, with nothing installed yet."""
    checkout = tmp_path / "checkout"
    (checkout / "contracts").mkdir(parents=True)
    shutil.copy(MAKEFILE, checkout / "Makefile")
    for name in ("pyproject.toml", "contracts/package.json", "contracts/package-lock.json"):
        (checkout / name).write_text("")
    return checkout


def _apt(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.tool == "apt-get"]


def test_sandbox_has_no_real_apt_get_sudo_or_chromium(tmp_path):
    box = _sandbox(tmp_path, uid=ROOT, sudo=False)
    path = box.env["PATH"]
    assert shutil.which("apt-get", path=path) == str(box.fakes / "apt-get")
    assert shutil.which("id", path=path) == str(box.fakes / "id")
    assert shutil.which("sudo", path=path) is None
    assert shutil.which("chromium", path=path) is None
    assert shutil.which("pip", path=path) is None


@pytest.mark.parametrize("sudo", [False, True], ids=["no-sudo", "sudo-present"])
def test_root_installs_chromium_with_apt_get_directly(tmp_path, sudo):
    box = _sandbox(tmp_path, uid=ROOT, sudo=sudo)
    result = box.make("chromium")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "command not found" not in result.stderr
    calls = box.calls()
    assert [c.tool for c in calls] == ["apt-get", "apt-get"], calls
    update, install = calls
    assert update.args == ["update", "-q"] and not update.via_sudo
    assert install.args == APT_INSTALL and not install.via_sudo
    assert install.frontend == "noninteractive"
    assert (box.fakes / "chromium").exists()


def test_non_root_installs_chromium_through_sudo(tmp_path):
    box = _sandbox(tmp_path, uid=USER)
    result = box.make("chromium")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = box.calls()
    assert [c.tool for c in calls] == ["sudo", "apt-get", "sudo", "apt-get"], calls
    assert calls[0].args == ["apt-get", "update", "-q"]
    assert calls[1].args == ["update", "-q"] and calls[1].via_sudo
    assert calls[2].args[-len(APT_INSTALL) - 1:] == ["apt-get", *APT_INSTALL]
    install = calls[3]
    # Set after sudo's env_reset, so it reaches apt-get.
    assert install.args == APT_INSTALL and install.via_sudo and install.frontend == "noninteractive"


@pytest.mark.parametrize("uid", [ROOT, USER], ids=["root", "user"])
@pytest.mark.parametrize("failing", ["update", "install"])
def test_apt_get_failure_fails_make_with_the_message(tmp_path, uid, failing):
    box = _sandbox(tmp_path, uid=uid, update_rc=100 if failing == "update" else 0,
                   install_rc=100 if failing == "install" else 0)
    result = box.make("chromium")
    assert result.returncode != 0
    assert ERROR in result.stdout + result.stderr
    apt = _apt(box.calls())
    assert [c.args[0] for c in apt] == (["update"] if failing == "update" else ["update", "install"])
    assert not (box.fakes / "chromium").exists()


def test_non_root_without_sudo_fails_with_the_message(tmp_path):
    box = _sandbox(tmp_path, uid=USER, sudo=False)
    result = box.make("chromium")
    assert result.returncode != 0
    assert ERROR in result.stdout + result.stderr
    assert _apt(box.calls()) == []


@pytest.mark.parametrize("uid", [ROOT, USER], ids=["root", "user"])
def test_install_test_on_a_fresh_machine_installs_chromium(tmp_path, uid):
    box = _sandbox(tmp_path, uid=uid, sudo=uid != ROOT)
    checkout = _fresh_checkout(tmp_path)
    result = box.make("install-test", directory=checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = box.calls()
    assert {c.tool for c in calls} <= {"python3", "venv-python", "npm", "sudo", "apt-get"}, calls
    pip = [c.args for c in calls if c.tool == "venv-python"]
    assert ["-m", "pip", "--disable-pip-version-check", "-q", "install", "-e", ".[test]"] in pip
    install = [c for c in _apt(calls) if c.args[:1] == ["install"]]
    assert len(install) == 1 and install[0].args == APT_INSTALL
    assert install[0].frontend == "noninteractive" and install[0].via_sudo == (uid != ROOT)
    assert (checkout / ".venv" / ".installed-test").exists()
    # Installed: a second run does nothing.
    box.log.unlink()
    again = box.make("install-test", directory=checkout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert box.calls() == []


def test_install_test_skips_apt_get_when_chromium_is_there(tmp_path):
    box = _sandbox(tmp_path, uid=USER)
    box.install_chromium()
    checkout = _fresh_checkout(tmp_path)
    result = box.make("install-test", directory=checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {c.tool for c in box.calls(include_id=True)} <= {"python3", "venv-python", "npm"}
    assert (checkout / ".venv" / ".installed-test").exists()


def test_install_test_fails_and_retries_when_chromium_cannot_be_installed(tmp_path):
    box = _sandbox(tmp_path, uid=ROOT, sudo=False, install_rc=100)
    checkout = _fresh_checkout(tmp_path)
    result = box.make("install-test", directory=checkout)
    assert result.returncode != 0
    assert ERROR in result.stdout + result.stderr
    # No stamp: the next `make test` tries chromium again instead of skipping it.
    assert not (checkout / ".venv" / ".installed-test").exists()
    box.log.unlink()
    assert box.make("install-test", directory=checkout).returncode != 0
    assert [c.args[0] for c in _apt(box.calls())] == ["update", "install"]
