"""known_hosts read as OpenSSH reads it, as data: tests/data/good/known_hosts/*.txt must let the
pool connect to a real sshd host ({h1} is its line, {h1_hashed} the same hashed, {other_key}
another host's key); tests/data/bad/known_hosts/*.txt name with `# expect: :LINE: text` the
FILE:LINE problems they must produce, without connecting anywhere."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import paramiko
import pytest

from provisioner.errors import UserError
from provisioner.ssh import HostKeyError, KnownHostsError, Pool, read_known_hosts
from tests.sshd import sshd_hosts  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((ROOT / "tests/data/good/known_hosts").glob("*.txt"))
BAD = sorted((ROOT / "tests/data/bad/known_hosts").glob("*.txt"))
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKTjq8VKzk7ikK6nAS6Y3qiCnP1S3dHHdTZLH3oNzfbL"


def fill(template: Path, dest: Path, host=None) -> Path:
    data = template.read_bytes()
    if host is not None:
        entry = f"[{host.address}]:{host.port}"
        hashed = paramiko.HostKeys.hash_host(entry)
        data = (data.replace(b"{h1_hashed}", f"{hashed} {host.host_pubkey_line}".encode())
                .replace(b"{h1}", host.known_hosts_line.encode()))
    data = data.replace(b"{other_key}", OTHER_KEY.encode()).replace(
        b"{h1}", b"h1.example.com " + OTHER_KEY.encode()).replace(
        b"{h1_hashed}", paramiko.HostKeys.hash_host("h1").encode() + b" " + OTHER_KEY.encode())
    dest.write_bytes(data)
    return dest


@pytest.mark.parametrize("case", BAD, ids=lambda p: p.stem)
def test_bad_line_is_named_by_file_and_line(case, tmp_path):
    path = fill(case, tmp_path / "known_hosts")
    text = case.read_bytes().decode("utf-8", errors="replace")
    expected = [m.group(1) for m in re.finditer(r"^# expect: (.+)$", text, re.M)]
    assert expected
    with pytest.raises(KnownHostsError) as e:
        read_known_hosts(path)
    assert isinstance(e.value, UserError)
    message = str(e.value)
    for want in expected:
        assert f"{path}{want}" in message, message
    assert message.count(f"{path}:") == len(expected)


@pytest.mark.parametrize("case", GOOD, ids=lambda p: p.stem)
def test_lines_openssh_reads_do_not_stop_connections(case, sshd_hosts, tmp_path):  # noqa: F811
    h1 = sshd_hosts[0]
    path = fill(case, tmp_path / "known_hosts", h1)
    with Pool([h1.node()], path) as pool:
        assert pool.errors == {}
        assert pool.run("echo ok")["h1"].stdout == "ok\n"


def test_cert_authority_lines_are_skipped_and_said_so(tmp_path):
    path = fill(GOOD[0], tmp_path / "known_hosts")
    known = read_known_hosts(path)
    assert any("@cert-authority" in why for _line, why in known.skipped)
    assert known.keys.lookup("other.example.com") and known.keys.lookup("192.0.2.7")
    assert known.keys.lookup("good.example.com") and not known.keys.lookup("bad.example.com")


def test_a_revoked_key_is_refused_even_when_listed_or_trusted(sshd_hosts, tmp_path):  # noqa: F811
    h1 = sshd_hosts[0]
    path = tmp_path / "known_hosts"
    for lines, trust in (([h1.known_hosts_line], False), ([], True)):
        path.write_text("\n".join(lines + [f"@revoked * {h1.host_pubkey_line}"]) + "\n")
        with pytest.raises(HostKeyError) as e:
            Pool([h1.node()], path, trust_new=trust)
        assert "is marked @revoked on line" in str(e.value)
    assert path.read_text() == f"@revoked * {h1.host_pubkey_line}\n"  # trust recorded nothing


def test_hashed_entry_matches(sshd_hosts, tmp_path):  # noqa: F811
    h1 = sshd_hosts[0]
    entry = f"[{h1.address}]:{h1.port}"
    path = tmp_path / "known_hosts"
    path.write_text(f"{paramiko.HostKeys.hash_host(entry)} {h1.host_pubkey_line}\n")
    key = paramiko.PKey.from_type_string(*[h1.host_pubkey_line.split()[0],
                                           base64.b64decode(h1.host_pubkey_line.split()[1])])
    assert read_known_hosts(path).keys.lookup(entry)[key.get_name()] == key
