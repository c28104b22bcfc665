"""Standard Webhooks signatures: v1,<base64 HMAC-SHA256 of "id.timestamp.body">."""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


class SigningSecretError(ValueError):
    """A signing secret that is not whsec_<base64>; the message holds no secret."""


def secret_key(secret: str) -> bytes:
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise SigningSecretError("the signing secret is not whsec_<base64>") from None
    if not key:
        raise SigningSecretError("the signing secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, as it appears in the webhook-signature header."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Every secret's signature, space-separated (old and new during a rotation)."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)
