"""Job tokens: a credential for one job's agent-to-agent calls, scoped so that a job
leader's `peers.json` never holds a peer's own token.

    gj1.<job>.<nonce>.<mac>      mac = HMAC-SHA256(peer's token, "gj1.<job>.<nonce>"), hex

Whoever holds the peer's full token (the console, when it submits a job with its peers;
a leader in SSH mode that reads a restarted peer's token file) mints one; the peer
checks it with its own token and no state. It opens only the calls a leader makes to a
peer for that job (the agent's guard decides which). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "gj1"
NONCE_BYTES = 16
_TOKEN_RE = re.compile(r"gj1\.([a-z0-9][a-z0-9-]{0,62})\.([0-9a-f]{32})\.([0-9a-f]{64})\Z")


class JobTokenError(ValueError):
    """A job token asked for without what it needs; the message says what."""


def _mac(peer_token: str, job: str, nonce: str) -> str:
    message = f"{PREFIX}.{job}.{nonce}".encode()
    return hmac.new(peer_token.encode(), message, hashlib.sha256).hexdigest()


def mint_job_token(peer_token: str, job: str, nonce: str | None = None) -> str:
    """A token for `job`'s calls to the peer whose own token is `peer_token`."""
    if not peer_token:
        raise JobTokenError("a job token needs the peer's token")
    if is_job_token(peer_token):
        raise JobTokenError("a job token is minted from a peer's own token, not another job token")
    nonce = nonce if nonce is not None else secrets.token_hex(NONCE_BYTES)
    token = f"{PREFIX}.{job}.{nonce}.{_mac(peer_token, job, nonce)}"
    if _TOKEN_RE.match(token) is None:
        raise JobTokenError(f"job {job!r}: not a job name, or nonce {nonce!r} is not 32 hex digits")
    return token


def scoped_for(token: str, job: str) -> str:
    """`token` as something safe to keep for `job`: a job token as it is, a peer's own
    token minted into one ("" stays "": a peer reached by certificate only)."""
    if not token or is_job_token(token):
        return token
    return mint_job_token(token, job)


def is_job_token(token: str) -> bool:
    return token.startswith(PREFIX + ".")


def job_of(token: str) -> str | None:
    """The job a well-formed job token names (unverified); None for anything else."""
    found = _TOKEN_RE.match(token)
    return found.group(1) if found else None


def verify_job_token(token: str, peer_token: str) -> str | None:
    """The job `token` opens, when `peer_token` minted it; None otherwise."""
    found = _TOKEN_RE.match(token)
    if found is None or not peer_token:
        return None
    job, nonce, mac = found.groups()
    return job if hmac.compare_digest(mac, _mac(peer_token, job, nonce)) else None
