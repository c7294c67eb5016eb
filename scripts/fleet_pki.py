"""Certificates and keys for a fleet (``flows/coordinator.py`` + ``flows/site.py``), for trials and tests.

    python scripts/fleet_pki.py OUT --host 127.0.0.1 --sites site-a site-b site-c

writes ``OUT/ca.pem`` (give it to every site), ``OUT/server.pem`` + ``OUT/server.key`` (the coordinator's SuperLink
certificate, naming every ``--host``: the address the sites dial) and, per site, ``OUT/<site>.key`` (the site's
SuperNode authentication key, stays at the site) and ``OUT/<site>.pub`` (OpenSSH public key, goes to the
coordinator, which registers it). ECDSA P-384, valid ``--days`` days. A real fleet uses its own CA and creates each
site's key at the site; this script keeps the whole set in one place, which is only right for a trial on one host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def write_fleet_pki(out: Path, hosts: Sequence[str], sites: Sequence[str], days: int = 30) -> dict[str, Path]:
    """Write the CA, the SuperLink certificate for ``hosts`` and one key pair per site; return the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    pem, pkcs8, none = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
        )

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bearing-fl fleet CA")])
    ca = (
        builder("bearing-fl fleet CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = (
        builder(hosts[0], ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / "ca.pem", "cert": out / "server.pem", "key": out / "server.key"}
    _write(paths["ca"], ca.public_bytes(pem))
    _write(paths["cert"], server.public_bytes(pem))
    _write(paths["key"], server_key.private_bytes(pem, pkcs8, none), private=True)
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        _write(out / f"{site}.key", key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none), private=True)
        _write(
            out / f"{site}.pub",
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        )
        paths[site] = out / f"{site}.key"
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/fleet_pki.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--host", action="append", required=True, help="address the sites dial (repeatable)")
    parser.add_argument("--sites", nargs="+", required=True, help="site names")
    parser.add_argument("--days", type=int, default=30, help="validity in days")
    args = parser.parse_args(argv)
    for name, path in write_fleet_pki(args.out, args.host, args.sites, args.days).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
