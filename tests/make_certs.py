"""Issues many certificate pairs at once for tests/tls.rs (openssl would take a process each).

    python3 make_certs.py CA_CRT CA_KEY DIR COUNT PREFIX

Writes DIR/PREFIX-N.crt and DIR/PREFIX-N.key for N in 0..COUNT: each a new P-256 key and a
certificate for PREFIX-N.example, common name PREFIX-N, valid for 30 days, signed by the CA.
"""
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def main():
    ca_crt, ca_key, out, count, prefix = sys.argv[1:6]
    with open(ca_crt, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(ca_key, "rb") as f:
        signer = serialization.load_pem_private_key(f.read(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    for n in range(int(count)):
        name = f"{prefix}-{n}"
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.example")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(out, f"{name}.key"), "wb") as f:
            f.write(key_pem)
        with open(os.path.join(out, f"{name}.crt"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))


if __name__ == "__main__":
    main()
