"""Credentials for a deployment: a self-signed CA and server certificate (TLS), and device key pairs (node auth).

Flower 1.42 encrypts every API of the SuperLink with one certificate, and authenticates a SuperNode by an EC
key pair whose public half the server registered beforehand (``flwr supernode register``). Both are plain files
here, written with the ``cryptography`` package, so a user who brings their own (from a real CA, or
``ssh-keygen -t ecdsa -b 384``) passes paths instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlearn.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.x509 import GeneralName


@dataclass(frozen=True)
class TlsFiles:
    """PEM files the SuperLink serves with; devices need only ``ca`` (``--root-certificates``)."""

    ca: Path
    cert: Path
    key: Path

    def check(self) -> None:
        missing = [f"{name} ({path})" for name, path in (("CA", self.ca), ("certificate", self.cert),
                                                          ("key", self.key)) if not path.is_file()]
        if missing:
            raise ConfigError(f"TLS files not found: {', '.join(missing)}; pass existing PEM files, or omit them "
                              "to let `fed serve` generate a self-signed CA in the run folder")


def default_names(host: str) -> list[str]:
    """Names and addresses the server certificate should be valid for (loopback, this host, ``host``)."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return list(dict.fromkeys(n for n in names if n))


def self_signed(folder: Path, names: list[str], *, days: int = 365) -> TlsFiles:
    """A CA and a server certificate it signed, valid for ``names``; reused if the folder already holds them."""
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    if files.ca.exists() and files.cert.exists() and files.key.exists() and _covers(files.cert, names):
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pocketlearn fed serve CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(cert.public_bytes(pem))
    _write_private(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return files


def device_key(path: Path) -> Path:
    """The device's private key at ``path`` (created if missing, EC P-384 in OpenSSH format); returns its .pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = path.with_name(path.name + ".pub")
    if path.exists():
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), None)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path} is not an unencrypted OpenSSH private key ({err}); make one with "
                              "`ssh-keygen -t ecdsa -b 384 -N '' -f KEY` or point --key at a new path") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC key; Flower authenticates devices by EC keys "
                              "(`ssh-keygen -t ecdsa -b 384`)")
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    if not public.exists():
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH) + b"\n")
    return public


def public_keys(path: Path) -> list[Path]:
    """Device public keys to register: one ``.pub`` file, or every ``*.pub`` in a folder."""
    if path.is_dir():
        found = sorted(path.glob("*.pub"))
        if not found:
            raise ConfigError(f"{path} holds no *.pub files; put each device's public key there (`fed join` prints "
                              "where it wrote it)")
        return found
    if not path.is_file():
        raise ConfigError(f"no public key file or folder at {path}")
    return [path]


def _san(name: str) -> GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _covers(cert_path: Path, names: list[str]) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    valid = cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return valid and all(str(ipaddress.ip_address(n)) in have if _is_ip(n) else n in have for n in names)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
