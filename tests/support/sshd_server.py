"""A throw-away OpenSSH server on 127.0.0.1 for tests of SSH remotes.

Debian's sshd runs in the foreground with its own host key, config, authorized client key
and a free high port, all under a temporary folder, and is stopped by its PID. A client
needs only the key file: dvc-ssh connects through sshfs, which turns asyncssh's host key
check off (`known_hosts=None`), so no known_hosts entry is needed and none is consulted.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # the Debian service creates it; sshd as root refuses without
START_TIMEOUT_S = 15


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    client_key: Path

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path.resolve()}"


def _keygen(path: Path) -> str:
    """A new ed25519 key pair without passphrase; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fresnel-test",
                    "-f", str(path)], check=True, capture_output=True)  # fmt: skip
    return path.with_suffix(".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, port: int) -> Path:
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    return config


def _wait_until_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"sshd did not listen on port {port} in {START_TIMEOUT_S} s:\n{log.read_text()}"
    )


@contextmanager
def sshd(tmp: Path) -> Iterator[SshServer]:
    """Start sshd under `tmp`, yield how to reach it, stop it by PID."""
    if not SSHD.is_file():
        raise RuntimeError(
            f"{SSHD} is missing: apt-get install --no-install-recommends openssh-server"
        )
    tmp.mkdir(parents=True, exist_ok=True)
    _keygen(tmp / "host_key")
    (tmp / "authorized_keys").write_text(_keygen(tmp / "client_key") + "\n")
    port = _free_port()
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = tmp / "sshd.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(_config(tmp, port))],
                                stdout=err, stderr=err)  # fmt: skip
    try:
        _wait_until_listening(proc, port, log)
        yield SshServer(port, getpass.getuser(), tmp / "client_key")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
