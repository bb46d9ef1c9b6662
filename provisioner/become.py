"""Root on a node through sudo, for an SSH user other than root (`ansible_become`).

Everything the provisioner does on a node needs root. A node whose `ansible_user` is root is
used as it is (no sudo, no extra round trip). For any other user every command runs as
`sudo -n -H -- bash -c CMD` (a password-less sudo), or, when the user's sudo asks for a
password, as `sudo -k -S -p '' -H -- bash -c CMD` with the password as the first line of the
command's stdin: sudo reads exactly that line (byte by byte) and hands the rest to the command.
The password comes from `ansible_become_password_file` (a 0600 file, checked by validate) or
from a prompt (`ask()`, e.g. `--ask-become-pass`); it is never put on a command line, in the
environment or in a log.
"""

from __future__ import annotations

import getpass
import shlex

_asked: list[str] = []  # the password typed at the prompt, for nodes without a password file


def ask(prompt: str = "sudo password on the nodes: ") -> None:
    """Ask once on the terminal; used for every node that becomes root without a password file."""
    _asked[:] = [getpass.getpass(prompt)]


def forget() -> None:
    _asked.clear()


def password(node) -> str | None:
    """The sudo password for `node`, or None when none was given (sudo must then need none)."""
    if node.become_password_file:
        with open(node.become_password_file, encoding="utf-8") as f:
            text = f.read()
        return text.split("\n", 1)[0].rstrip("\r")
    return _asked[0] if _asked else None


def where(node) -> str:
    """Where the node's password came from, for messages (never the password)."""
    return node.become_password_file or ("the prompt" if _asked else "nowhere")


def wrap(cmd: str, with_password: bool) -> str:
    """`cmd` run by bash as root through sudo, never waiting on a terminal."""
    if with_password:
        return f"exec sudo -k -S -p '' -H -- bash -c {shlex.quote(cmd)}"
    return f"exec sudo -n -H -- bash -c {shlex.quote(cmd)}"


# One round trip when connecting: does sudo work without a terminal? With a password, a sudo
# that needs none is used without one (else the password line would reach the command).
CHECK = "command -v sudo >/dev/null || { echo 'sudo: command not found' >&2; exit 127; }\n"
CHECK_NOPASSWD = CHECK + "exec sudo -n -- true\n"
CHECK_PASSWORD = (CHECK + "if sudo -n -- true 2>/dev/null; then echo nopasswd; exit 0; fi\n"
                  "exec sudo -k -S -p '' -- true\n")


def problem(node, rc: int | None, stderr: str, had_password: bool) -> tuple[str, str]:
    """(message, fix) for a sudo check that failed on `node`."""
    user = node.ssh_user
    said = (stderr.strip().splitlines() or [f"exit {rc}"])[-1].strip()
    if rc == 127:
        return (f"sudo is not installed, and {user} is not root ({said})",
                "install sudo on the host (as root: apt-get install sudo) and let "
                f"{user} use it, or log in as root (ansible_user: root)")
    if had_password:
        return (f"sudo as {user} did not accept the password from {where(node)} ({said})",
                f"check the password, and that {user} may run any command as root "
                f"(`{user} ALL=(ALL) ALL` in /etc/sudoers.d/{user})")
    return (f"{user} cannot run sudo without a password or a terminal ({said})",
            f"let {user} use sudo without a password: add `{user} ALL=(ALL) NOPASSWD:ALL` to "
            f"/etc/sudoers.d/{user} (mode 0440) on the host; or give the password in a 0600 "
            "file with ansible_become_password_file: FILE (or --ask-become-pass)")
