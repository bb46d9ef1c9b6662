"""Inventory validation, tested as data.

tests/data/bad/NNN-name.yml: one mistake each, with `# expect: <substring>` lines naming the
problem line it must produce. tests/data/good/*.yml, inventories/*.yml, tests/data/lab-*.yml and
tests/data/ansible/*/ (group_vars/, host_vars/, nested groups, INI) must validate clean and read
the same through ansible-inventory: hosts, role groups and every host's merged variables.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import inventory, validate
from provisioner.errors import InvalidInventory
from provisioner.model import ROLE_GROUPS

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests/data/bad").glob("*.yml"))
GOOD = sorted((ROOT / "tests/data/good").glob("*.yml")) + sorted(
    (ROOT / "inventories").glob("*.yml")) + sorted((ROOT / "tests/data").glob("lab-*.yml")) + [
    p for d in sorted((ROOT / "tests/data/ansible").iterdir()) for p in sorted(d.iterdir())
    if p.name in ("inventory.yml", "hosts")]  # with group_vars/, host_vars/, INI
LINE = re.compile(r"^[^:]+:\d+: \S+: .+")
BIN = Path(sys.executable).parent


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def expectations(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")  # some cases are not UTF-8
    return [line.split("# expect:", 1)[1].strip()
            for line in text.splitlines() if line.startswith("# expect:")]


def problems_of(path: Path, check=None) -> list[str]:
    with pytest.raises(InvalidInventory) as e:
        inventory.load(rel(path), check=check)
    return [str(p) for p in e.value.problems]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in inventories (bundle_dir) and messages are repo-relative


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_is_large_and_well_formed():
    assert len(BAD) >= 55
    names = [p.name for p in BAD]
    assert all(re.match(r"^\d{3}-[a-z0-9-]+\.yml$", n) for n in names), names
    assert len({n[:3] for n in names}) == len(names), "numbers must be unique"
    for path in BAD:
        assert path.read_bytes().startswith(b"# expect: "), path.name


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_inventory(path):
    expected = expectations(path)
    assert expected, f"{path.name} has no `# expect:` line"
    lines = problems_of(path)
    for line in lines:
        assert LINE.match(line), f"not FILE:LINE: key: message: {line!r}"
        assert line.startswith(rel(path) + ":")
    for want in expected:
        assert re.match(r"^:\d+: \S+: ", want), f"expectation must name :LINE: and key: {want}"
        assert any(want in line for line in lines), f"{want!r} not in:\n" + "\n".join(lines)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_good_inventory(path):
    cluster = inventory.load(rel(path))
    assert cluster.control_planes


@pytest.mark.parametrize("path", sorted((ROOT / "tests/data/warn").glob("*.yml")),
                         ids=lambda p: p.stem)
def test_allowed_but_unwise_inventory_loads_with_its_warning(path):
    wants = [line.split("# warning:", 1)[1].strip() for line in path.read_text().splitlines()
             if line.startswith("# warning:")]
    cluster = inventory.load(rel(path))
    assert wants and len(cluster.warnings) == len(wants)
    assert all(w.startswith(rel(path) + want) for w, want in zip(cluster.warnings, wants))
    r = invoke_validate(rel(path))
    assert r.returncode == 0 and f"warning: {rel(path)}{wants[0]}" in r.stderr


def test_good_inventories_have_no_warning():
    assert [w for p in GOOD for w in inventory.load(rel(p)).warnings] == []


def test_every_rule_has_a_bad_inventory():
    """Each semantic check, run alone, rejects at least one structurally sound bad file."""
    sound = []  # (cluster, where) of the files whose only problems are semantic
    for path in BAD:
        try:
            inventory.load(rel(path), check=lambda c, w: sound.append((c, w)) or [])
        except InvalidInventory:
            pass
    for rule in validate.CHECKS:
        assert any(list(rule(c, w)) for c, w in sound), f"no bad file exercises {rule.__name__}"


def test_all_problems_are_reported_at_once(tmp_path):
    text = (ROOT / "inventories/single.yml").read_text()
    text = text.replace("cluster_name: single", "cluster_name: Single_1")
    text = text.replace("192.168.56.21", "192.168.56.11")
    text = text.replace("kubernetes_version: v1.36.4", "kubernetes_version: v1.36.4+k3s1")
    f = tmp_path / "many.yml"
    f.write_text(text)
    with pytest.raises(InvalidInventory) as e:
        inventory.load(f)
    keys = sorted(p.key for p in e.value.problems)
    assert keys == ["all.children.workers.hosts.w1.ansible_host", "all.vars.cluster_name",
                    "all.vars.kubernetes_version"]
    assert [p.line for p in e.value.problems] == sorted(p.line for p in e.value.problems)


# --- where problems point --------------------------------------------------------------------


def where_of(path) -> inventory.Where:
    seen = {}
    inventory.load(path, check=lambda c, w: seen.setdefault("where", w) and [])
    return seen["where"]


def test_missing_setting_points_at_its_block():
    w = where_of("inventories/lab.yml")
    lines = (ROOT / "inventories/lab.yml").read_text().splitlines()
    key, line = w.setting("bundle_dir")
    assert key == "all.vars.cluster.bundle_dir"
    assert lines[line - 1].strip() == "cluster:"
    key, line = w.setting("api_vip")
    assert lines[line - 1].strip() == "api_vip: 10.90.0.100"


def test_host_points_at_the_block_with_its_variables():
    """lab.yml lists cp1 first under etcd without variables, then under control_plane."""
    w = where_of("inventories/lab.yml")
    lines = (ROOT / "inventories/lab.yml").read_text().splitlines()
    key, line = w.host("cp1", "ansible_host")
    assert key == "all.children.control_plane.hosts.cp1.ansible_host"
    assert "10.90.0.11" in lines[line - 1]
    key, line = w.host("cp1", "ansible_user")  # inherited from all.vars
    assert key == "all.vars.ansible_user"
    assert lines[line - 1].strip() == "ansible_user: root"


def test_key_with_spaces_is_named_by_its_parent(tmp_path):
    f = tmp_path / "space.yml"
    f.write_text("all:\n  vars:\n    pod cidr: 10.0.0.0/16\n"
                 "  children: {control_plane: {hosts: {cp1: {ansible_host: 10.1.0.1}}}}\n")
    (line,) = [str(p) for p in pytest.raises(InvalidInventory, inventory.load, f).value.problems]
    assert LINE.match(line) and ":3: all.vars: unknown setting" in line


def test_unreadable_file():
    with pytest.raises(InvalidInventory) as e:
        inventory.load("tests/data/no-such-inventory.yml")
    assert "cannot read" in str(e.value)


# --- the CLI ---------------------------------------------------------------------------------


def invoke_validate(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "invoke"), "cluster.validate", "-i", path], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["021-unknown-group-control-plane", "001-tab-indent",
                                  "058-vip-other-subnet", "086-bundle-dir-missing"])
def test_cli_reports_problems(name):
    path = rel(next(p for p in BAD if p.stem == name))
    r = invoke_validate(path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Traceback" not in out
    for want in expectations(ROOT / path):
        assert f"{path}{want}" in out
    problem_lines = [ln for ln in r.stderr.splitlines() if ln.startswith(path + ":")]
    assert problem_lines and all(LINE.match(ln) for ln in problem_lines)


def test_cli_missing_file():
    r = invoke_validate("tests/data/no-such-inventory.yml")
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "no-such-inventory.yml:0: file: cannot read" in r.stderr


def test_cli_accepts_a_good_inventory():
    r = invoke_validate("inventories/lab.yml")
    assert r.returncode == 0, r.stderr
    assert "inventories/lab.yml: valid: 6 host(s)" in r.stdout
    assert "API 10.90.0.100:6443" in r.stdout


# --- Ansible reads the same inventory --------------------------------------------------------


def ansible_members(data: dict, group: str) -> set[str]:
    """The hosts of a group in `ansible-inventory --list` output, its children's included."""
    body = data.get(group, {})
    out = set(body.get("hosts", []))
    for child in body.get("children", []):
        out |= ansible_members(data, child)
    return out


@pytest.mark.parametrize("path", GOOD, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_ansible_reads_the_same_inventory(path):
    """Parity: the hosts, their role groups and every host's merged variables (inventory,
    group vars, group_vars/, host_vars/) equal what ansible-inventory gives."""
    env = dict(os.environ, ANSIBLE_INVENTORY_ENABLED="yaml,ini",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="1")
    r = subprocess.run([str(BIN / "ansible-inventory"), "-i", rel(path), "--list"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    cluster = inventory.load(rel(path))
    for group in ROLE_GROUPS:
        ours = sorted(n.name for n in cluster.with_role(group))
        assert sorted(ansible_members(data, group)) == ours, group
    hostvars = data["_meta"]["hostvars"]
    assert sorted(hostvars) == sorted(n.name for n in cluster.nodes)
    assert json.loads(json.dumps(inventory.variables(rel(path)))) == hostvars
    for n in cluster.nodes:
        assert hostvars[n.name]["ansible_host"] == n.address
        assert hostvars[n.name].get("ansible_port", 22) == n.ssh_port
        assert hostvars[n.name].get("ansible_user", "root") == n.ssh_user
        assert hostvars[n.name].get("node_labels", {}) == n.labels


# --- reading hostile files: a clear FILE:LINE error, never a traceback or a hang -------------


def one_problem(tmp_path, data: bytes) -> str:
    f = tmp_path / "inv.yml"
    f.write_bytes(data)
    with pytest.raises(InvalidInventory) as e:
        inventory.load(f)
    lines = [str(p) for p in e.value.problems]
    assert all(LINE.match(line) and line.startswith(f"{f}:") for line in lines), lines
    return "\n".join(lines)


def test_utf16_with_a_bom(tmp_path):
    data = (ROOT / "inventories/single.yml").read_text().encode("utf-16")
    assert ":1: file: the file is UTF-16 text" in one_problem(tmp_path, data)


def test_utf16_without_a_bom_is_caught_by_its_nul_bytes(tmp_path):
    data = (ROOT / "inventories/single.yml").read_text().encode("utf-16-le")
    assert ":1: file: a NUL byte" in one_problem(tmp_path, data)


def test_a_utf8_bom_is_fine(tmp_path):
    f = tmp_path / "bom.yml"
    f.write_bytes(b"\xef\xbb\xbf" + (ROOT / "inventories/single.yml").read_bytes())
    assert inventory.load(f).cluster_name == "single"


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_deep_nesting_block_and_flow(tmp_path, depth):
    flow = b"all:\n  vars:\n    x: " + b"[" * depth + b"]" * depth + b"\n"
    assert ":3: yaml: nested deeper than" in one_problem(tmp_path, flow)
    block = "all:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, min(depth, 3000)))
    assert "yaml: nested deeper than" in one_problem(tmp_path, block.encode())


def test_alias_bombs_stop_quickly(tmp_path):
    """The issue's 405-byte file took 51 s and 2.4 GB; the 455-byte one ran out of memory."""
    import time

    for levels in (9, 10, 30):
        text = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
            f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, levels))
        text += f"all: *a{levels - 1}\n"
        start = time.monotonic()
        assert "yaml: the file expands to more than" in one_problem(tmp_path, text.encode())
        assert time.monotonic() - start < 3


def test_recursive_alias_in_a_merge_key(tmp_path):
    text = b"all: &a\n  vars:\n    <<: *a\n"
    assert "recursive alias" in one_problem(tmp_path, text)


def test_merge_keys_are_read_like_ansible_does():
    c = inventory.load("tests/data/good/merge-keys.yml")
    w1, w2 = c.node("w1"), c.node("w2")
    assert (w1.address, w1.labels) == ("192.168.56.21", {"tier": "base"})
    assert (w2.address, w2.labels) == ("192.168.56.22", {"tier": "db"})
    where = where_of("tests/data/good/merge-keys.yml")
    assert where.host("w1", "ansible_host")[1] == 16  # the key written there, not the anchor's
    assert where.host("w1", "node_labels")[1] == 11  # merged: the anchor's line


def test_state_dir_from_the_environment_pointing_at_a_file(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(f))
    with pytest.raises(InvalidInventory) as e:
        inventory.load("inventories/single.yml")
    assert f"$PROVISIONER_STATE_DIR: {f} is a file, not a folder" in str(e.value)


def _sudo_inventory(tmp_path: Path, password_file: str) -> Path:
    path = tmp_path / "sudo.yml"
    path.write_text("all:\n  vars:\n    cluster_name: demo\n    ansible_user: deploy\n"
                    f"    ansible_become_password_file: {password_file}\n"
                    "  children:\n    control_plane:\n      hosts:\n"
                    "        cp1: {ansible_host: 192.168.56.11}\n")
    return path


@pytest.mark.parametrize("mode, problem", [
    (0o600, None), (0o400, None),
    (0o640, "has mode 0640: other users can read the sudo password (`chmod 600 "),
    (0o604, "has mode 0604: other users can read the sudo password")])
def test_become_password_file_must_be_private(tmp_path, mode, problem):
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(mode)
    path = _sudo_inventory(tmp_path, "pw")  # relative to the inventory, not the current folder
    if problem is None:
        node = inventory.load(path).nodes[0]
        assert (node.ssh_user, node.become, node.become_password_file) == ("deploy", True, str(secret))
        return
    with pytest.raises(InvalidInventory) as e:
        inventory.load(path)
    found = [str(p) for p in e.value.problems]
    assert len(found) == 1
    assert found[0].startswith(f"{path}:5: all.vars.ansible_become_password_file: {secret} {problem}")


@pytest.mark.parametrize("text, user, become", [
    ("", "root", False),
    ("    ansible_become: true\n", "root", False),  # root needs no sudo: no extra round trip
    ("    ansible_user: vagrant\n", "vagrant", True),  # implied: the provisioner needs root
    ("    ansible_user: vagrant\n    ansible_become: true\n", "vagrant", True),
])
def test_become_follows_the_user(tmp_path, text, user, become):
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  vars:\n    cluster_name: demo\n" + text + "  children:\n"
                    "    control_plane:\n      hosts:\n        cp1: {ansible_host: 192.168.56.11}\n")
    node = inventory.load(path).nodes[0]
    assert (node.ssh_user, node.become, node.become_password_file) == (user, become, None)
