"""An app's view of the sidecar's SPIFFE Workload API, through py-spiffe
(`pip install spiffe`) and raw grpcio calls, for tests/tests/workload_api.rs.
It reports what it saw as one JSON object on stdout; the Rust test asserts.
The socket comes from SPIFFE_ENDPOINT_SOCKET, as an app's would.

  fetch SIDECAR_ADDR     one X509-SVID, checked against its bundle, and the
                         certificate the sidecar itself presents on SIDECAR_ADDR
  rotations COUNT SECS   stream until COUNT distinct SVIDs arrived (or SECS)
  raw                    calls with and without the security header, and a JWT call
  bundles COUNT SECS     stream FetchX509Bundles until COUNT messages (or SECS), printing
                         `ready` once the first is in
  hold                   open a FetchX509SVID stream, print `ready` once the first
                         message is in, and report how the stream ended
"""

import hashlib
import json
import os
import socket
import ssl
import sys
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import TrustDomain, WorkloadApiClient, X509Bundle
from spiffe._proto import workload_pb2


def spki(public_key):
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def uri_sans(cert):
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def describe(svid, bundle):
    """What an app checks: the chain verifies against the bundle of its
    trust domain, and the private key is the leaf's."""
    leaf = svid.leaf
    try:
        verifier = PolicyBuilder().store(Store(list(bundle.x509_authorities))).build_client_verifier()
        verifier.verify(leaf, svid.cert_chain[1:])
        verifies = "ok"
    except Exception as e:  # the reason goes into the report
        verifies = f"{type(e).__name__}: {e}"
    return {
        "spiffe_id": str(svid.spiffe_id),
        "leaf_uri_sans": uri_sans(leaf),
        "chain_len": len(svid.cert_chain),
        "serial": format(leaf.serial_number, "x"),
        "leaf_spki_sha256": spki(leaf.public_key()),
        "key_spki_sha256": spki(svid.private_key.public_key()),
        "chain_verifies": verifies,
    }


def context_report(ctx):
    svid = ctx.default_svid
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    return describe(svid, bundle)


def sidecar_certificate(addr):
    """The certificate the sidecar presents to peers (TLS 1.3: it arrives
    before the sidecar asks for ours)."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return {"uri_sans": uri_sans(cert), "spki_sha256": spki(cert.public_key())}


def fetch(sidecar_addr):
    with WorkloadApiClient(default_timeout=20) as client:
        report = context_report(client.fetch_x509_context())
        bundles = client.fetch_x509_bundles()
        report["bundle_trust_domains"] = sorted(str(b.trust_domain) for b in bundles.bundles)
    report["sidecar"] = sidecar_certificate(sidecar_addr)
    return report


def rotations(count, seconds):
    seen = {}
    errors = []
    done = threading.Event()

    def on_success(ctx):
        r = context_report(ctx)
        seen.setdefault(r["serial"], r)
        if len(seen) >= count:
            done.set()

    def on_error(e):
        errors.append(str(e))
        done.set()

    client = WorkloadApiClient()
    handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    done.wait(seconds)
    handle.cancel()
    client.close()
    return {"svids": list(seen.values()), "errors": errors}


RAW = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
HEADER = [("workload.spiffe.io", "true")]


def raw_channel():
    """A channel without py-spiffe, which always adds the header."""
    return grpc.insecure_channel("unix:" + os.environ["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://"))


def broken_framing():
    """A CONTINUATION frame with no HEADERS before it: the sidecar should
    close the connection."""
    path = os.environ["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 1, 9, 4, 0, 0, 0, 1, 0x82]))
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


def raw():
    out = {}
    with raw_channel() as channel:
        svid = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", **RAW)
        for name, metadata in [("no_header", None), ("header_false", [("workload.spiffe.io", "false")])]:
            try:
                next(iter(svid(b"", metadata=metadata, timeout=10)))
                out[name] = {"code": "OK"}
            except grpc.RpcError as e:
                out[name] = {"code": e.code().name, "details": e.details()}
        first = next(iter(svid(b"", metadata=HEADER, timeout=10)))
        out["broken_framing_closed"] = broken_framing()
        out["with_header_bytes"] = len(first)
        jwt = channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID", **RAW)
        try:
            jwt(b"", metadata=HEADER, timeout=10)
            out["jwt"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["jwt"] = {"code": e.code().name, "details": e.details()}
    return out


def bundles(count, seconds):
    out = {"bundles": []}
    with raw_channel() as channel:
        stream = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509Bundles",
            request_serializer=lambda b: b,
            response_deserializer=workload_pb2.X509BundlesResponse.FromString,
        )(b"", metadata=HEADER, timeout=seconds)
        try:
            for msg in stream:
                out["bundles"].append({
                    td: len(X509Bundle.parse_raw(TrustDomain(td), der).x509_authorities)
                    for td, der in msg.bundles.items()
                })
                if len(out["bundles"]) == 1:
                    print("ready", flush=True)
                if len(out["bundles"]) >= count:
                    break
        except grpc.RpcError as e:
            out["error"] = e.code().name
    return out


def hold():
    with raw_channel() as channel:
        stream = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", **RAW)(b"", metadata=HEADER, timeout=60)
        next(stream)
        print("ready", flush=True)
        try:
            for _ in stream:
                pass
            return {"ended": "OK"}
        except grpc.RpcError as e:
            return {"ended": e.code().name, "details": e.details()}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fetch":
        report = fetch(args[0])
    elif cmd == "rotations":
        report = rotations(int(args[0]), float(args[1]))
    elif cmd == "raw":
        report = raw()
    elif cmd == "bundles":
        report = bundles(int(args[0]), float(args[1]))
    elif cmd == "hold":
        report = hold()
    else:
        sys.exit(f"unknown command {cmd}")
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
