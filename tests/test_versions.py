"""The version table (provisioner/versions.py) is the one source: validation, the defaults, the
bundle and the README's table all follow it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from provisioner import bundle as bundles
from provisioner import inventory as inv
from provisioner import validate, versions
from tests.conftest import REPO


def test_readme_holds_exactly_the_rendered_table():
    out = subprocess.run([sys.executable, "-m", "provisioner.versions"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out == versions.markdown_table()
    readme = (REPO / "README.md").read_text()
    assert out in readme, ("README.md's version table differs from provisioner/versions.py: "
                           "paste `python -m provisioner.versions` into it")
    assert readme.count("| minor | kubeadm |") == 1


def test_every_row_is_well_formed():
    for m in versions.MINORS.values():
        assert re.fullmatch(r"v" + re.escape(m.minor) + r"\.\d+", m.kubernetes)
        assert re.fullmatch(r"v" + re.escape(m.minor) + r"\.\d+\+k3s\d+", m.k3s)
        assert m.crictl.startswith(f"v{m.minor}.")  # cri-tools follows the minor
        for v in (m.cni_plugins, m.containerd, m.runc):
            assert re.fullmatch(r"v\d+\.\d+\.\d+", v)
        # the bundle's containerd satisfies what the minor's kubelet requires of the OS's
        assert versions.as_tuple(m.containerd) >= versions.as_tuple(m.containerd_min)
    assert list(versions.MINORS) == sorted(versions.MINORS, key=versions.as_tuple)


def test_validation_default_and_bundle_follow_the_table():
    assert validate.SUPPORTED_MINORS == tuple(versions.MINORS)
    assert inv.DEFAULT_VERSION == versions.DEFAULT
    assert not hasattr(bundles, "PINNED")
    c = inv.load(REPO / "inventories/single.yml")
    pin = versions.pins(c.kubernetes_version)
    got = {a.component: a.version for a in bundles.artifacts(c)}
    assert got == {"kubeadm": pin.kubernetes, "kubelet": pin.kubernetes,
                   "kubectl": pin.kubernetes, "crictl": pin.crictl,
                   "CNI plugins": pin.cni_plugins, "containerd": pin.containerd,
                   "runc": pin.runc}


@pytest.mark.parametrize("version,ok", [("v1.34.9", False), ("v1.35.0", True),
                                        ("v1.37.1", True), ("v1.38.0", False)])
def test_supported_range(tmp_path, version, ok):
    path = tmp_path / "inv.yml"
    path.write_text(f"""all:
  vars: {{kubernetes_version: {version}}}
  children:
    control_plane: {{hosts: {{cp1: {{ansible_host: 192.168.56.11}}}}}}
""")
    if ok:
        assert inv.load(path, check=validate.check_for_fetch).kubernetes_version == version
    else:
        with pytest.raises(Exception, match=r"is not supported \(use a 1\.35 to 1\.37 release"):
            inv.load(path, check=validate.check_for_fetch)
