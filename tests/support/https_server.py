"""A static HTTPS file server for the tests, with a certificate authority of
its own: what a model store behind a private CA looks like to `specdec
fetch`. Run as a script to serve; import it to make the certificates.

    python https_server.py --root DIR --bind IP --port PORT --cert C --key K
"""

from __future__ import annotations

import argparse
import functools
import http.server
import ssl
import subprocess
from pathlib import Path


def make_certificates(directory: Path, ip: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for `ip`. Returns the paths of
    the CA certificate, the server certificate and the server key (PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{ip}\n"
    )

    def openssl(*args: str):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256",
            "-keyout", str(ca_key), "-out", str(ca_crt), "-subj", "/CN=specdec-test-model-store-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-keyout", str(key), "-out", str(csr), "-subj", "/CN=specdec-test-model-store")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(extensions), "-out", str(crt))
    return ca_crt, crt, key


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--key", required=True, type=Path)
    args = parser.parse_args()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.root))
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
