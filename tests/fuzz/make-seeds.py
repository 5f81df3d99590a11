#!/usr/bin/env python3
"""Writes the fuzz seeds that need keys: CSRs, service-account tokens and
trust bundles, signed with the fuzz-only keys in fixtures/ (made on first
run). Needs python3 with `cryptography`. The text seeds are plain files in
corpus/ and are edited by hand."""

import base64
import datetime
import json
import os
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")
CORPUS = os.path.join(HERE, "corpus")
ISSUER = "https://kubernetes.default.svc.cluster.local"
FAR = 4102444800  # 2100-01-01


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key(name, make):
    path = os.path.join(FIX, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(pem_key(make()))
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def jwks(ec_key, rsa_key):
    e = ec_key.public_key().public_numbers()
    r = rsa_key.public_key().public_numbers()
    n_bytes = lambda v: v.to_bytes((v.bit_length() + 7) // 8, "big")
    return {
        "keys": [
            {"kty": "EC", "crv": "P-256", "kid": "fuzz-ec", "use": "sig", "alg": "ES256",
             "x": b64u(e.x.to_bytes(32, "big")), "y": b64u(e.y.to_bytes(32, "big"))},
            {"kty": "RSA", "kid": "fuzz-rsa", "use": "sig", "alg": "RS256",
             "n": b64u(n_bytes(r.n)), "e": b64u(n_bytes(r.e))},
        ]
    }


def token(header, claims, ec_key=None, rsa_key=None):
    msg = (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())).encode()
    if rsa_key:
        sig = rsa_key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    elif ec_key:
        r, s = decode_dss_signature(ec_key.sign(msg, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = b""
    return msg.decode() + "." + b64u(sig)


def jwt_seeds(ec_key, rsa_key):
    good = {"iss": ISSUER, "aud": ["palisade"], "sub": "system:serviceaccount:demo:client",
            "exp": FAR, "iat": 1700000000, "nbf": 1700000000}
    ec_h = {"alg": "ES256", "kid": "fuzz-ec"}
    rsa_h = {"alg": "RS256", "kid": "fuzz-rsa", "typ": "JWT"}
    write("jwt", "es256-valid", token(ec_h, good, ec_key=ec_key))
    write("jwt", "rs256-valid", token(rsa_h, good, rsa_key=rsa_key))
    write("jwt", "rs256-no-kid", token({"alg": "RS256"}, good, rsa_key=rsa_key))
    write("jwt", "expired", token(ec_h, dict(good, exp=1700000100), ec_key=ec_key))
    write("jwt", "wrong-audience", token(ec_h, dict(good, aud="api"), ec_key=ec_key))
    write("jwt", "alg-none", token({"alg": "none"}, good))
    write("jwt", "hs256", token({"alg": "HS256"}, good))
    write("jwt", "unknown-kid", token(dict(ec_h, kid="other"), good, ec_key=ec_key))
    # 0x01 + a claims set: the harness signs it with the EC key.
    claims = lambda c: b"\x01" + json.dumps(c).encode()
    write("jwt", "claims-valid", claims(good))
    write("jwt", "claims-bad-sub", claims(dict(good, sub="system:serviceaccount:demo")))
    write("jwt", "claims-no-exp", claims({k: v for k, v in good.items() if k != "exp"}))
    write("jwt", "claims-wrong-issuer", claims(dict(good, iss="https://evil")))
    # 0x02 + nbf and exp as offsets from now + a sub: the harness builds the rest.
    window = lambda nbf, exp, sub: b"\x02" + struct.pack("<ii", nbf, exp) + sub.encode()
    write("jwt", "window-valid", window(-60, 3600, "system:serviceaccount:demo:client"))
    write("jwt", "window-expired", window(-7200, -3600, "system:serviceaccount:demo:client"))
    write("jwt", "window-bad-sub", window(-60, 3600, "system:serviceaccount:demo"))


def csr_seeds():
    keys = {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa2048": rsa.generate_private_key(65537, 2048),
        "rsa1024": rsa.generate_private_key(65537, 1024),
    }
    for name, k in keys.items():
        algo = None if name == "ed25519" else hashes.SHA256()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/demo/sa/x")]), False)
               .sign(k, algo))
        der = csr.public_bytes(serialization.Encoding.DER)
        write("csr", name + ".der", der)
        write("csr", name + ".pem", csr.public_bytes(serialization.Encoding.PEM))
        if name == "p256":
            bad = bytearray(der)
            bad[der.index(b"workload")] ^= 1
            write("csr", "tampered.der", bytes(bad))


def ca_cert(k, cn, algo):
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365 * 75))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://cluster.local")]), False)
            .sign(k, algo))


def bundle_seeds():
    ec_ca = ca_cert(ec.generate_private_key(ec.SECP256R1()), "fuzz ec ca", hashes.SHA256())
    rsa_ca = ca_cert(rsa.generate_private_key(65537, 2048), "fuzz rsa ca", hashes.SHA256())
    keys = []
    for c in (ec_ca, rsa_ca):
        der = c.public_bytes(serialization.Encoding.DER)
        pub = c.public_key()
        k = {"use": "x509-svid", "x5c": [base64.b64encode(der).decode()]}
        if isinstance(pub, ec.EllipticCurvePublicKey):
            n = pub.public_numbers()
            k.update(kty="EC", crv="P-256", x=b64u(n.x.to_bytes(32, "big")),
                     y=b64u(n.y.to_bytes(32, "big")))
        else:
            n = pub.public_numbers()
            k.update(kty="RSA", n=b64u(n.n.to_bytes(256, "big")), e=b64u(n.e.to_bytes(3, "big")))
        keys.append(k)
    doc = {"keys": keys, "spiffe_sequence": 3, "spiffe_refresh_hint": 300}
    write("bundle", "spiffe-bundle.json", json.dumps(doc, indent=2))
    write("bundle", "spiffe-bundle-empty.json", '{"keys":[],"spiffe_sequence":0,"spiffe_refresh_hint":0}')
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (ec_ca, rsa_ca))
    write("bundle", "bundle.pem", pem)


def main():
    os.makedirs(FIX, exist_ok=True)
    ec_key = key("jwt-ec.pem", lambda: ec.generate_private_key(ec.SECP256R1()))
    rsa_key = key("jwt-rsa.pem", lambda: rsa.generate_private_key(65537, 2048))
    with open(os.path.join(FIX, "jwks.json"), "w") as f:
        json.dump(jwks(ec_key, rsa_key), f, indent=2)
        f.write("\n")
    jwt_seeds(ec_key, rsa_key)
    csr_seeds()
    bundle_seeds()


if __name__ == "__main__":
    main()
