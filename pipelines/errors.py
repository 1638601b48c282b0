"""Errors of the pipeline steps.

Every error the CLI can show derives from :class:`StreamflowError`. Each class knows its process exit code
(the CLI contract: 2 for bad input, 75 for a state held by another run, 1 for everything else) so the CLI maps
errors to codes in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote


class StreamflowError(Exception):
    """A failure the user can act on; its message is shown as is."""

    exit_code = 1


class InvalidInput(StreamflowError):
    """The input (a file, a folder, an argument) is wrong: nothing was changed."""

    exit_code = 2


class QuarantineThresholdExceeded(InvalidInput):
    """Too many rows of a month failed validation: the month was not loaded."""


class NotFound(StreamflowError):
    """Something the step needs does not exist yet (e.g. a snapshot that was never taken)."""

    exit_code = 2


class StateLocked(StreamflowError):
    """Another run holds the state lock (see :mod:`pipelines.lock`): nothing was changed; retrying later can help.

    Exit code 75 is EX_TEMPFAIL of sysexits.h ("temporary failure, the user is invited to retry"): a script or a
    workflow can tell "busy" from "broken" (1) and "bad input" (2).
    """

    exit_code = 75


# ------------------------------------------------------------------------------------------------ secrets in messages

# a URL anywhere in a text: any scheme, whatever its case (`Postgresql://`, `mysql://`); it ends at a space or a quote
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")
_SECRET_PARAM = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|sslpassword|secret|token|access_token|api_key|apikey)=(?P<value>[^&\s'\"]*)"
)
_SHORT = 3  # fragments of a password shorter than this are only hidden when quoted ("s3")


def redact_url(url: str) -> str:
    """``url`` without its password: the userinfo's (up to the *last* ``@``, so an unencoded ``@`` in the password
    hides too) and every password-like query parameter (``?password=…``). Any scheme, a stray space included."""
    return redact(url)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL's password hidden (see :func:`redact_url`), every ``password=…``-like parameter, and
    every occurrence of the given secrets and of their fragments (a parser that split a password at an unencoded
    ``@`` or ``/`` quotes a piece of it: ``could not translate host name "cret@127.0.0.1"``)."""
    text = _URL.sub(_redact_match, text)
    text = _SECRET_PARAM.sub(_redact_param, text)
    for secret in sorted(_fragments(secrets), key=len, reverse=True):
        if len(secret) >= _SHORT:
            text = text.replace(secret, "***")
        else:
            text = text.replace(f'"{secret}"', '"***"')
    return text


def url_secrets(url: str | None) -> list[str]:
    """The secrets a URL holds: its password (as written and percent-decoded) and password-like query values."""
    if not url or "://" not in url:
        return []
    rest = url.strip().split("://", 1)[1]
    found = []
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found += [m["value"] for m in _SECRET_PARAM.finditer(rest)]
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


def _redact_match(match: re.Match[str]) -> str:
    rest = match["rest"]
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return match["scheme"] + rest


def _redact_param(match: re.Match[str]) -> str:
    value = match["value"]
    end = value[len(value.rstrip(":;,.)")) :]  # the sentence's punctuation, not the secret's
    return f"{match['key']}=***{end}"


def _fragments(secrets: Iterable[str]) -> set[str]:
    out = set()
    for secret in secrets:
        if secret:
            out.add(secret)
            out.update(piece for piece in re.split(r"[@/:#?&=%\s]", secret) if len(piece) >= 2)
    return out
