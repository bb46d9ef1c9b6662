#!/usr/bin/env bash
# Install everything the provisioner, its lab and its tests need on a Debian 12 machine (root).
# Idempotent: a second run installs nothing new. Creates ./.venv with the Python packages.
set -euo pipefail
cd "$(dirname "$0")"

DEBS=(
  python3 python3-venv git openssh-client   # the provisioner itself
  systemd-container debootstrap dpkg-dev    # the built-in lab (nspawn nodes, package source)
  iproute2 openssh-server                   # lab bridge; sshd for the SSH engine's tests
  vagrant                                   # `vagrant validate` of the Vagrantfile
  vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base
  iptables                                  # the VM lab (lab.up --provider vagrant, lab.box)
  sudo                                      # tests of a non-root SSH user with sudo
  skopeo                                    # bundle.fetch: images as OCI archives
  docker-registry busybox-static            # the images lab test: a local OCI registry, tiny images
)
missing=()
for d in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import provisioner, pytest, kubernetes_validate' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
echo "bootstrap: ready (.venv/bin/invoke, .venv/bin/pytest)"
