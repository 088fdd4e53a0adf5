"""Certificate credentials as azure-identity's CertificateCredential uses them (issue 17): a client assertion
signed with a certificate registered on the application (a keyCredential, seeded through the admin API) signs
in; a certificate that is not registered is AADSTS700027.

The PEM file holds the private key and the certificate together, as `az ad sp create-for-rbac --create-cert`
writes `fileWithCertAndPrivateKey`; `send_certificate_chain` is off (no x5c, subject-name/issuer
authentication is not emulated).
"""

import base64
import datetime
import hashlib
import uuid

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import ARM_SCOPE, unverified_claims


def make_certificate(tmp_path, name: str) -> tuple[str, str, bytes]:
    """A self-signed RSA certificate valid for a year; returns (certificate PEM, path of key+cert PEM, DER)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / f"{name}.pem"
    path.write_text(key_pem + cert_pem)
    return cert_pem, str(path), cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def cert_app(emulator, tmp_path):
    """An application with one registered certificate; returns (appId, path of its key+cert PEM, DER)."""
    cert_pem, path, der = make_certificate(tmp_path, "registered")
    app_id = str(uuid.uuid4())
    seeded = emulator.admin(
        "POST",
        "seed",
        json={
            "applications": [
                {
                    "displayName": f"cert-app-{app_id[:8]}",
                    "appId": app_id,
                    "objectId": str(uuid.uuid4()),
                    "servicePrincipalId": str(uuid.uuid4()),
                    "keyCredentials": [{"certificatePem": cert_pem}],
                }
            ]
        },
    )
    assert seeded.status_code == 200, seeded.text
    return app_id, path, der


def certificate_credential(emulator, app_id: str, path: str) -> CertificateCredential:
    # Instance discovery is off for the reason conftest.Emulator.credential gives.
    return CertificateCredential(
        emulator.tenant_id,
        app_id,
        certificate_path=path,
        send_certificate_chain=False,
        authority=emulator.url,
        connection_verify=emulator.ca_file,
        disable_instance_discovery=True,
    )


def test_certificate_credential_signs_in_for_arm(emulator, cert_app):
    app_id, path, der = cert_app
    token = certificate_credential(emulator, app_id, path).get_token(ARM_SCOPE)
    claims = unverified_claims(token.token)
    assert claims["appid"] == app_id
    # appidacr 2: the client proved itself with a certificate (or assertion), not a secret.
    assert claims["appidacr"] == "2"

    # The registered key credential, as the state shows it: the thumbprint Graph reports is the SHA-1 one.
    state = emulator.admin("GET", "state").json()
    app = next(a for a in state["directory"]["applications"].values() if a["appId"] == app_id)
    [key] = app["keyCredentials"]
    assert key["customKeyIdentifier"] == base64.b64encode(hashlib.sha1(der).digest()).decode()
    assert key["type"] == "AsymmetricX509Cert" and key["usage"] == "Verify"


def test_unregistered_certificate_is_aadsts700027(emulator, cert_app, tmp_path):
    app_id, _, _ = cert_app
    _, stranger, _ = make_certificate(tmp_path, "stranger")
    with pytest.raises(ClientAuthenticationError) as err:
        certificate_credential(emulator, app_id, stranger).get_token(ARM_SCOPE)
    assert "AADSTS700027" in str(err.value)
