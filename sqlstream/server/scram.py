"""SCRAM-SHA-256 (RFC 5802 / RFC 7677), the server side, as Postgres speaks it.

The exchange is three messages: the client's first message (user name is ignored: Postgres
takes it from the startup packet), our challenge (nonce, salt, iteration count), and the
client's proof, which we check against the stored key before sending our signature.

>>> secret = ScramSecret.from_password("pencil", salt=b"0123456789abcdef", iterations=4096)
>>> server = ScramServer(secret, nonce="srv")
>>> challenge = server.first("n,,n=,r=cli")
>>> challenge.startswith("r=clisrv,s=")
True
>>> proof = client_final(secret_password="pencil", client_first_bare="n=,r=cli", server_first=challenge)
>>> server.final(proof).startswith("v=")
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlstream.errors import SqlStreamError

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096  # Postgres's default scram_iterations


class AuthFailed(SqlStreamError):
    sqlstate = "28P01"


class ProtocolViolation(SqlStreamError):
    sqlstate = "08P01"


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class ScramSecret:
    """What a server keeps instead of the password (as in ``pg_authid.rolpassword``)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
    ) -> ScramSecret:
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, _h(client_key), _hmac(salted, b"Server Key"))


def _attributes(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolViolation(f"malformed SCRAM message: {message!r}")
        out[part[0]] = part[2:]
    return out


class ScramServer:
    """One authentication exchange. ``secret`` None = unknown user: the exchange runs to the
    end with a made-up secret and fails, so a client cannot tell unknown users apart."""

    def __init__(self, secret: ScramSecret | None, *, nonce: str | None = None) -> None:
        self.valid = secret is not None
        self.secret = secret or ScramSecret.from_password(secrets.token_hex(16))
        self.server_nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.client_first_bare = ""
        self.server_first = ""
        self.gs2_header = ""

    def first(self, client_first: str) -> str:
        """The server-first message for the client-first message."""
        if not client_first.startswith(("n,", "y,")):
            # 'p=' asks for channel binding, which we do not offer (no SCRAM-SHA-256-PLUS).
            raise ProtocolViolation("SCRAM channel binding is not supported")
        comma = client_first.index(",", 2)
        self.gs2_header = client_first[: comma + 1]
        self.client_first_bare = client_first[comma + 1 :]
        attrs = _attributes(self.client_first_bare)
        if "r" not in attrs:
            raise ProtocolViolation("SCRAM client-first message has no nonce")
        nonce = attrs["r"] + self.server_nonce
        salt = base64.b64encode(self.secret.salt).decode()
        self.server_first = f"r={nonce},s={salt},i={self.secret.iterations}"
        return self.server_first

    def final(self, client_final: str) -> str:
        """Check the client's proof; the server-final message (our signature) when right."""
        without_proof, _, proof_part = client_final.rpartition(",p=")
        attrs = _attributes(without_proof)
        if not proof_part or "r" not in attrs or "c" not in attrs:
            raise ProtocolViolation("malformed SCRAM client-final message")
        if base64.b64decode(attrs["c"]).decode(errors="replace") != self.gs2_header:
            raise ProtocolViolation("SCRAM channel binding data does not match")
        if not attrs["r"].endswith(self.server_nonce):
            raise ProtocolViolation("SCRAM nonce does not match")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(self.secret.stored_key, auth_message)
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ProtocolViolation("malformed SCRAM proof") from None
        if len(proof) != len(signature):
            raise ProtocolViolation("malformed SCRAM proof")
        client_key = _xor(proof, signature)
        if not (self.valid and hmac.compare_digest(_h(client_key), self.secret.stored_key)):
            raise AuthFailed("password authentication failed")
        server_sig = _hmac(self.secret.server_key, auth_message)
        return "v=" + base64.b64encode(server_sig).decode()


def client_final(*, secret_password: str, client_first_bare: str, server_first: str) -> str:
    """The client side of the last step (for tests and the doctest above)."""
    attrs = _attributes(server_first)
    salted = hashlib.pbkdf2_hmac(
        "sha256", secret_password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    proof = _xor(client_key, _hmac(_h(client_key), auth_message))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"
