"""Configuration: one TOML file, read once, typed and validated.

Every problem is a `ConfigError` whose message names the file, the key and
what is wrong, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ledger.errors import ConfigError
from ledger.pointer import check as pointer_problem
from ledger.signatures.registry import SCHEMES

DEFAULT_DATABASE_URL = "sqlite:///hookledger.db"
SCOPES = ("read", "admin")
TOKEN_MIN_CHARS = 16


@dataclass(frozen=True)
class ServerConfig:
    """The `[server]` table."""

    max_body_bytes: int = 1_048_576
    redact_headers: frozenset[str] = frozenset({"authorization", "cookie"})
    access_log: bool = True
    body_timeout_seconds: float = 30.0
    rejections_max_bytes: int = 64 * 1024 * 1024
    allowed_hosts: frozenset[str] = frozenset()  # served besides loopback when no tokens


@dataclass(frozen=True)
class Token:
    """One `[[tokens]]` entry; `value` is None when its variable is unset."""

    name: str
    token_env: str
    scopes: frozenset[str]
    value: str | None


@dataclass(frozen=True)
class SourceConfig:
    """One `[sources.NAME]` table, with its secrets resolved from the environment."""

    name: str
    verifier: str
    secret_env: str | None = None  # the variable(s), as text for messages: "A" or "A or B"
    secrets: tuple[str, ...] = ()
    tolerance_seconds: int = 300
    signature_header: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    send_options: Mapping[str, str] = field(default_factory=dict)  # e.g. shop_domain
    body_dedup: bool = True

    @property
    def dedup_body(self) -> bool:
        """Whether a repeat of a body already in this source's log is a duplicate (SPEC 3):
        for verifiers that sign only the body, unless `body_dedup = false`."""
        return self.body_dedup and SCHEMES[self.verifier].signs_only_body

    @property
    def needs_secret(self) -> bool:
        return SCHEMES[self.verifier].needs_secret

    @property
    def configured(self) -> bool:
        """False when the verifier needs a secret and its variable is unset."""
        return bool(self.secrets) or not self.needs_secret


@dataclass(frozen=True)
class Config:
    """The whole configuration; `path` is None for built-in defaults."""

    path: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    server: ServerConfig = field(default_factory=ServerConfig)
    tokens: tuple[Token, ...] = ()
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    projections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    destinations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # `destinations`

    def unconfigured_sources(self) -> list[SourceConfig]:
        """Sources whose secret variable is unset: they answer 503 until it is."""
        return [s for s in self.sources.values() if not s.configured]


def resolve_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """`--config`, else HOOKLEDGER_CONFIG, else ./hookledger.toml when present."""
    if explicit:
        return explicit
    if env.get("HOOKLEDGER_CONFIG"):
        return env["HOOKLEDGER_CONFIG"]
    return "hookledger.toml" if Path("hookledger.toml").is_file() else None


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration the way the CLI and server do."""
    env = os.environ if env is None else env
    path = resolve_path(path, env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason})") from None
    return _parse(data, path or "<defaults>", env, path)


class Reader:
    """Typed access to one TOML table that names the key in every error."""

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any], allowed: set[str]):
        self.file, self.prefix, self.table = file, prefix, table
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.file}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            self.fail(key, f"expected {_type_word(names)}, got {type(value).__name__} {value!r}")
        return value

    def required(self, key: str, kind: type) -> Any:
        if key not in self.table:
            self.fail(key, "is required")
        return self.get(key, kind)

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self.get(key, list, default)
        if value is None:
            return []
        for item in value:
            if not isinstance(item, str):
                self.fail(key, f"expected a list of strings, found {item!r}")
        return value


def _type_word(names: str) -> str:
    words = {
        "str": "a string",
        "int": "an integer",
        "list": "a list",
        "dict": "a table",
        "bool": "true or false",
    }
    return " or ".join(words.get(name, name) for name in names.split(" or "))


def _parse(data: Mapping[str, Any], file: str, env: Mapping[str, str], path: str | None) -> Config:
    top = Reader(
        file,
        "",
        data,
        {"database_url", "server", "tokens", "sources", "projections", "destinations"},
    )
    database_url = env.get("HOOKLEDGER_DATABASE_URL") or top.get(
        "database_url", str, DEFAULT_DATABASE_URL
    )
    if not database_url.startswith(("sqlite", "postgresql")):
        top.fail("database_url", f"unsupported database {database_url!r} (sqlite or postgresql)")

    srv = Reader(
        file,
        "server.",
        top.get("server", dict, {}),
        {
            "max_body_bytes",
            "redact_headers",
            "access_log",
            "body_timeout_seconds",
            "rejections_max_bytes",
            "allowed_hosts",
        },
    )
    max_body = srv.get("max_body_bytes", int, ServerConfig.max_body_bytes)
    if max_body < 1:
        srv.fail("max_body_bytes", "must be at least 1")
    redact = srv.strings("redact_headers", sorted(ServerConfig.redact_headers))
    access_log = srv.get("access_log", bool, True)
    body_timeout = srv.get("body_timeout_seconds", (int, float), ServerConfig.body_timeout_seconds)
    if isinstance(body_timeout, bool) or not 0 < body_timeout <= 3600:
        srv.fail(
            "body_timeout_seconds",
            f"must be a number of seconds in (0, 3600], got {body_timeout!r}",
        )
    rejections_max = srv.get("rejections_max_bytes", int, ServerConfig.rejections_max_bytes)
    if rejections_max < 0:
        srv.fail("rejections_max_bytes", "must be 0 (keep none, only count them) or more")
    hosts = srv.strings("allowed_hosts", [])
    for host in hosts:
        if not host or any(c in host for c in "/ @") or host != host.strip():
            srv.fail(
                "allowed_hosts", f"expected host names such as 'hooks.example.com', got {host!r}"
            )
    allowed = frozenset(h.lower().strip("[]") for h in hosts)
    server = ServerConfig(
        max_body,
        frozenset(h.lower() for h in redact),
        access_log,
        body_timeout_seconds=float(body_timeout),
        rejections_max_bytes=rejections_max,
        allowed_hosts=allowed,
    )

    tokens = _tokens(top, env)

    sources = {}
    for name, raw in top.get("sources", dict, {}).items():
        if not isinstance(raw, dict):
            top.fail(f"sources.{name}", "expected a table")
        sources[name] = _source(file, name, raw, env)

    tables = {}
    for section in ("projections", "destinations"):  # parsed by their own packages
        tables[section] = top.get(section, dict, {})
        for name, raw in tables[section].items():
            if not isinstance(raw, dict):
                top.fail(f"{section}.{name}", "expected a table")
    return Config(path, database_url, server, tuple(tokens), sources, **tables)


def _tokens(top: Reader, env: Mapping[str, str]) -> list[Token]:
    """The `[[tokens]]`: unique names, distinct values, each at least 16 characters."""
    tokens: list[Token] = []
    for i, raw in enumerate(top.get("tokens", list, [])):
        if not isinstance(raw, dict):
            top.fail(f"tokens[{i}]", "expected a table ([[tokens]])")
        t = Reader(top.file, f"tokens[{i}].", raw, {"name", "token_env", "scopes"})
        token_env = t.required("token_env", str)
        scopes = t.strings("scopes", ["read"])
        for s in scopes:
            if s not in SCOPES:
                t.fail("scopes", f"unknown scope {s!r} (expected read or admin)")
        name = t.get("name", str, token_env)
        if any(other.name == name for other in tokens):
            t.fail("name", f"another token is already named {name!r}: names must be unique")
        value = env.get(token_env) or None
        if value is not None and len(value) < TOKEN_MIN_CHARS:
            t.fail(
                "token_env",
                f"{token_env} holds {len(value)} characters; "
                f"a token needs at least {TOKEN_MIN_CHARS}",
            )
        if value is not None and any(other.value == value for other in tokens):
            t.fail("token_env", f"{token_env} holds the same token as another entry")
        tokens.append(Token(name, token_env, frozenset(scopes), value))
    return tokens


def _source(file: str, name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> SourceConfig:
    allowed = {
        "verifier",
        "secret_env",
        "tolerance_seconds",
        "signature_header",
        "event_id",
        "event_type",
        "shop_domain",
        "body_dedup",
    }
    r = Reader(file, f"sources.{name}.", raw, allowed)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        r.fail("", "source names use letters, digits, '-', '_' and '.' only")
    verifier = r.required("verifier", str)
    if verifier not in SCHEMES:
        r.fail("verifier", f"unknown verifier {verifier!r} (expected one of: {', '.join(SCHEMES)})")
    scheme = SCHEMES[verifier]
    names, secrets = _secrets(r, env)
    if scheme.needs_secret and not names:
        r.fail("secret_env", f"is required by verifier {verifier!r}")
    tolerance = r.get("tolerance_seconds", int, 300)
    if tolerance < 1:
        r.fail("tolerance_seconds", "must be at least 1 (clocks and networks are not instant)")
    header = r.get("signature_header", str)
    if scheme.needs_header and not header:
        r.fail("signature_header", f"is required by verifier {verifier!r}")
    body_dedup = r.get("body_dedup", bool, True)
    if "body_dedup" in raw and not scheme.signs_only_body:
        signers = ", ".join(n for n, s in SCHEMES.items() if s.signs_only_body)
        r.fail(
            "body_dedup",
            f"applies only to verifiers whose signature covers only the body ({signers}); "
            f"{verifier!r} signs the delivery's id or timestamp too",
        )
    for key in ("event_id", "event_type"):
        spec = r.get(key, str)
        if spec is not None and not (spec.startswith("header:") or spec.startswith("/")):
            r.fail(key, f"expected 'header:Name' or a JSON Pointer like '/id', got {spec!r}")
        if spec is not None and spec.startswith("/") and (problem := pointer_problem(spec)):
            r.fail(key, problem)
    options = {}
    if "shop_domain" in raw:
        if verifier != "shopify":
            r.fail("shop_domain", "applies to verifier 'shopify' only")
        options["shop_domain"] = r.get("shop_domain", str)
        if not options["shop_domain"]:
            r.fail("shop_domain", "must not be empty")
    return SourceConfig(
        name=name,
        verifier=verifier,
        secret_env=" or ".join(names) or None,
        secrets=secrets,
        tolerance_seconds=tolerance,
        signature_header=header.lower() if header else None,
        event_id=r.get("event_id", str),
        event_type=r.get("event_type", str),
        send_options=options,
        body_dedup=body_dedup,
    )


def _secrets(r: Reader, env: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`secret_env`'s variable names and the secrets they hold (SPEC 3).

    One name: a comma-separated list of secrets, spaces around each removed. A list
    of names: each set variable holds one secret, taken verbatim (commas and spaces
    included); unset or empty ones are skipped."""
    value = r.get("secret_env", (str, list))
    if value is None or value == "":
        return (), ()
    if isinstance(value, str):
        text = env.get(value) or ""
        return (value,), tuple(s.strip() for s in text.split(",") if s.strip())
    if not value or not all(isinstance(v, str) and v for v in value):
        r.fail("secret_env", "expected a variable name or a non-empty list of variable names")
    if len(set(value)) != len(value):
        r.fail("secret_env", "names a variable twice")
    return tuple(value), tuple(env[v] for v in value if env.get(v))
