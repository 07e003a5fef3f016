"""Settings of the wire server: where it listens and who may connect.

Like :class:`sqlstream.config.Settings`: flags > ``SQLSTREAM_*`` environment variables >
defaults. Ports live in ``Settings`` (``pgwire_port``, ``http_port``); the rest is here.

Authentication is SCRAM-SHA-256 with one user and password. Running without authentication
must be asked for (``--auth trust``): a server started without a password refuses to start
rather than silently accepting anyone.

>>> c = ServerConfig.load({"password": "s3cret"}, env={})
>>> c.auth, c.user
('scram-sha-256', 'sqlstream')
>>> ServerConfig.load({}, env={"SQLSTREAM_AUTH": "trust"}).auth
'trust'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlstream.errors import InvalidParameterValue
from sqlstream.server.protocol import DEFAULT_MAX_MESSAGE

AUTH_METHODS = ("scram-sha-256", "trust")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    #: 'scram-sha-256' (password) or 'trust' (anyone who can reach the port)
    auth: str = "scram-sha-256"
    user: str = "sqlstream"
    password: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: largest message a client may send; bigger ones end that connection (54000)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE

    @classmethod
    def load(
        cls, flags: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None
    ) -> ServerConfig:
        env = os.environ if env is None else env
        flags = flags or {}

        def pick(name: str) -> object | None:
            value = flags.get(name)
            return value if value is not None else env.get(f"SQLSTREAM_{name.upper()}")

        c = cls()
        for name in ("host", "user", "password"):
            if (v := pick(name)) is not None:
                setattr(c, name, str(v))
        for name in ("tls_cert", "tls_key"):
            if (v := pick(name)) is not None:
                setattr(c, name, Path(str(v)))
        if (v := pick("max_message_bytes")) is not None:
            try:
                c.max_message_bytes = int(str(v))
            except ValueError:
                raise InvalidParameterValue(f"max_message_bytes must be an integer, not '{v}'") from None
        auth = pick("auth")
        c.auth = str(auth).lower() if auth is not None else "scram-sha-256"
        c.validate()
        return c

    def validate(self) -> None:
        if self.auth not in AUTH_METHODS:
            raise InvalidParameterValue(f"--auth must be one of {', '.join(AUTH_METHODS)}, not '{self.auth}'")
        if self.auth == "scram-sha-256" and not self.password:
            raise InvalidParameterValue(
                "no password set: give --password (or SQLSTREAM_PASSWORD) for SCRAM-SHA-256 "
                "authentication, or --auth trust to accept connections without one"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidParameterValue("TLS needs both --tls-cert and --tls-key")
