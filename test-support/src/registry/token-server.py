#!/usr/bin/python3
"""The token server of ferry's Bearer-auth test registry (distribution's token auth).

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...] with Basic credentials
answers {"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": ...}. The JWT
is ES256-signed by the key whose certificate (signed by the test CA, which is the
registry's rootcertbundle) travels in the header's x5c, as distribution 2.8 verifies it.
Bad credentials: 401. No credentials: 401, or with --anonymous-pull a token that grants
only `pull`. It binds 127.0.0.1:0 and writes the port it got to --port-file.

Test code only: this is not how to run a token server.
"""

import argparse
import base64
import datetime
import http.server
import json
import os
import secrets
import ssl
import sys
import urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--signing-cert", required=True)
    p.add_argument("--signing-key", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--anonymous-pull", action="store_true")
    return p.parse_args()


ARGS = parse_args()
with open(ARGS.password_file) as f:
    PASSWORD = f.read().rstrip("\n")
with open(ARGS.signing_cert, "rb") as f:
    CERT_DER = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
with open(ARGS.signing_key, "rb") as f:
    SIGNING_KEY = serialization.load_pem_private_key(f.read(), password=None)


def basic_user(header):
    """The user of a valid `Basic` header; None without one; False when it is wrong."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return False
    ok = secrets.compare_digest(user, ARGS.user) and secrets.compare_digest(password, PASSWORD)
    return user if ok else False


def granted(scopes, may_push):
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            continue
        kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
        allowed = [a for a in actions if a == "pull" or (may_push and a in ("push", "delete", "*"))]
        if allowed:
            access.append({"type": kind, "name": name, "actions": allowed})
    return access


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self.answer(404, {"error": "not found"})
        query = urllib.parse.parse_qs(url.query)
        if query.get("service", [""])[0] != ARGS.service:
            return self.answer(400, {"error": "unknown service"})
        user = basic_user(self.headers.get("Authorization"))
        if user is False or (user is None and not ARGS.anonymous_pull):
            return self.answer(401, {"error": "bad credentials"}, realm=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        claims = {
            "iss": ARGS.issuer,
            "sub": user or "",
            "aud": ARGS.service,
            "exp": now + datetime.timedelta(minutes=5),
            "nbf": now - datetime.timedelta(seconds=10),
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": granted(query.get("scope", []), may_push=user is not None),
        }
        headers = {"x5c": [base64.b64encode(CERT_DER).decode()]}
        token = jwt.encode(claims, SIGNING_KEY, algorithm="ES256", headers=headers)
        self.answer(200, {"token": token, "access_token": token, "expires_in": 300,
                          "issued_at": now.isoformat()})

    def answer(self, status, body, realm=False):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if realm:
            self.send_header("WWW-Authenticate", 'Basic realm="ferry-test-token"')
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("token-server: " + (fmt % args) + "\n")


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(ARGS.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(ARGS.port_file + ".tmp", ARGS.port_file)
    server.serve_forever()


main()
