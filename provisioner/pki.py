"""Certificate authorities and certificates, made on the controller and kept in the state folder.

Like kubeasz, the CAs live with the operator, not on a node: kubeadm finds the cluster CA in
/etc/kubernetes/pki and signs the rest itself, joins verify the API server against the CA hash
known before init, and etcd runs with mutual TLS from certificates issued here. Everything is
made once and read back, so a rerun renders the same bytes and restarts nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .model import Cluster
from .errors import UserError
from .state import State, write_atomic, write_secret

CA_DAYS = 3650
CERT_DAYS = 3650  # etcd member certs; `invoke cluster.renew-certs` is the day-2 way to rotate


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load(crt: Path, key: Path):
    """A certificate and its key, or a clear error naming the damaged file."""
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"{crt}: not a readable certificate ({e}); restore the state folder's "
                        "pki/ from a backup (a new CA would not match the cluster)") from None
    try:
        k = serialization.load_pem_private_key(key.read_bytes(), None)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{key}: not a readable private key ({e}); restore the state folder's "
                        "pki/ from a backup") from None
    return cert, k


def _now():
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)


def ensure_ca(folder: Path, name: str, common_name: str):
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    if not crt.exists():
        k = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                             False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), False)
                .sign(k, hashes.SHA256()))
        write_secret(key, _key_pem(k))
        write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))
    return _load(crt, key)


def ensure_cert(folder: Path, name: str, ca, common_name: str, sans: list[str],
                server: bool, client: bool) -> None:
    """Issue `name.crt`/`name.key` signed by `ca`, again only if the SANs changed."""
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    if crt.exists():
        have = _load(crt, key)[0]
        try:
            ext = have.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            current = sorted(str(v) for v in ext.get_values_for_type(x509.DNSName)) + sorted(
                str(v) for v in ext.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            current = []
        if current == _san_strings(sans):
            return
    ca_cert, ca_key = ca
    k = ec.generate_private_key(ec.SECP256R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(k.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(_now())
               .not_valid_after(_now() + dt.timedelta(days=CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                            False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san_objects(sans)), False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_secret(key, _key_pem(k))
    write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))


def _san_objects(sans):
    out = []
    for s in sans:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            out.append(x509.DNSName(s))
    return out


def _san_strings(sans) -> list[str]:
    ips, names = [], []
    for s in sans:
        try:
            ips.append(str(ipaddress.ip_address(s)))
        except ValueError:
            names.append(s)
    return sorted(names) + sorted(ips)


def ca_cert_hash(crt_pem: bytes) -> str:
    """kubeadm's discovery hash: sha256 of the CA's DER-encoded SubjectPublicKeyInfo."""
    spki = x509.load_pem_x509_certificate(crt_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def ensure(cluster: Cluster, state: State) -> dict[str, dict[str, tuple[bytes, int]]]:
    """Make what is missing; return the files to place: {host: {node path: (bytes, mode)}}."""
    pki = state.pki
    out: dict[str, dict[str, tuple[bytes, int]]] = {n.name: {} for n in cluster.nodes}

    def place(host, path, src: Path):
        out[host][path] = (src.read_bytes(), 0o600 if src.suffix == ".key" else 0o644)

    if not cluster.is_k3s:
        ensure_ca(pki, "ca", "kubernetes")
        ensure_ca(pki, "front-proxy-ca", "front-proxy-ca")
        for n in cluster.control_planes:
            for f in ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key"):
                place(n.name, f"/etc/kubernetes/pki/{f}", pki / f)

    if cluster.external_etcd:
        etcd = pki / "etcd"
        ca = ensure_ca(etcd, "ca", "etcd-ca")
        for n in cluster.etcd_nodes:
            sans = [n.name, n.address, "localhost", "127.0.0.1"]
            ensure_cert(etcd, f"{n.name}-server", ca, n.name, sans, server=True, client=True)
            ensure_cert(etcd, f"{n.name}-peer", ca, n.name, sans, server=True, client=True)
            place(n.name, "/etc/etcd/pki/ca.crt", etcd / "ca.crt")
            for kind in ("server", "peer"):
                place(n.name, f"/etc/etcd/pki/{kind}.crt", etcd / f"{n.name}-{kind}.crt")
                place(n.name, f"/etc/etcd/pki/{kind}.key", etcd / f"{n.name}-{kind}.key")
        ensure_cert(etcd, "apiserver-etcd-client", ca, "kube-apiserver-etcd-client", [],
                    server=False, client=True)
        ensure_cert(etcd, "healthcheck-client", ca, "kube-etcd-healthcheck-client", [],
                    server=False, client=True)
        for n in cluster.etcd_nodes:
            for f in ("healthcheck-client.crt", "healthcheck-client.key"):
                place(n.name, f"/etc/etcd/pki/{f}", etcd / f)
        for n in cluster.control_planes:
            place(n.name, "/etc/kubernetes/pki/etcd/ca.crt", etcd / "ca.crt")
            for f in ("apiserver-etcd-client.crt", "apiserver-etcd-client.key"):
                place(n.name, f"/etc/kubernetes/pki/{f}", etcd / f)
    return out


def join_hash(state: State) -> str | None:
    crt = state.pki / "ca.crt"
    return ca_cert_hash(crt.read_bytes()) if crt.exists() else None


# -- day 2: `invoke cluster.certs --renew` (provisioner/certs.py) -------------------------------

def renew_cert(folder: Path, name: str, ca, days: int = CERT_DAYS) -> x509.Certificate:
    """Issue `name.crt` again from `ca`: a new serial and validity, the same subject, SANs,
    usages and key (the key file is kept, so a node holding the old or the new certificate
    always has a matching pair while the files are pushed one by one)."""
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    old, k = _load(crt, key)
    ca_cert, ca_key = ca
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca_cert.subject)
               .public_key(k.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=days)))
    for ext in old.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))
    return cert


def etcd_issued(cluster: Cluster) -> list[str]:
    """Names (in state pki/etcd/) of the certificates we issue from the etcd CA."""
    if not cluster.external_etcd:
        return []
    return [f"{n.name}-{kind}" for n in cluster.etcd_nodes for kind in ("server", "peer")] + [
        "apiserver-etcd-client", "healthcheck-client"]


def load_ca(folder: Path, name: str = "ca"):
    return _load(folder / f"{name}.crt", folder / f"{name}.key")
