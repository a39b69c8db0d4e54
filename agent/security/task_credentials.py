"""The agent's credentials as its task programs find them: environment variables naming
the agent's token file and TLS files (never their contents), which the agent sets on
itself at start and its task runner passes on. The inference server a serve task starts
(`python -m agent.serve`) reads them, so it answers only whom the agent answers. Ranks
do not get them (`agent.runtime` takes them out of the ranks' environment)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path

from agent.security.tls import TlsFiles

TOKEN_FILE_ENV = "GANTRY_AGENT_TOKEN_FILE"
TLS_CA_ENV = "GANTRY_AGENT_TLS_CA"
TLS_CERT_ENV = "GANTRY_AGENT_TLS_CERT"
TLS_KEY_ENV = "GANTRY_AGENT_TLS_KEY"
CREDENTIAL_ENV = (TOKEN_FILE_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV)


def credential_env(token_file: Path, tls: TlsFiles | None) -> dict[str, str]:
    """The variables for an agent with this token file and these TLS files (absolute)."""
    env = {TOKEN_FILE_ENV: str(token_file.resolve())}
    if tls is not None:
        env[TLS_CA_ENV] = str(tls.ca.resolve())
        env[TLS_CERT_ENV] = str(tls.cert.resolve())
        env[TLS_KEY_ENV] = str(tls.key.resolve())
    return env


def export_credentials(
    environ: MutableMapping[str, str], token_file: Path, tls: TlsFiles | None
) -> None:
    """Sets the variables on `environ` (the agent's own), dropping stale TLS ones."""
    for name in CREDENTIAL_ENV:
        environ.pop(name, None)
    environ.update(credential_env(token_file, tls))


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less the agent's credential variables (for the ranks)."""
    return {k: v for k, v in environ.items() if k not in CREDENTIAL_ENV}


def env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    return Path(value) if value else None
