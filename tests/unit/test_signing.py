"""Standard Webhooks signatures, checked against the spec's vector and its library."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from reconciler.signing import (
    SigningSecretError,
    secret_key,
    sign,
    signature_header,
)

# The test vector published with the Standard Webhooks specification.
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()


def headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_the_spec_test_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert signature_header([SECRET], MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_the_reference_library_signs_the_vector_the_same_way() -> None:
    moment = datetime.fromtimestamp(TIMESTAMP, UTC)
    assert Webhook(SECRET).sign(MSG_ID, moment, BODY.decode()) == EXPECTED


def test_a_fresh_signature_verifies_with_the_reference_library() -> None:
    now = int(time.time())  # the library refuses timestamps over 5 minutes off
    body = b'{"text": "The rule no-public-s3 was violated"}'
    signature = signature_header([SECRET], "msg_abc", now, body)
    payload = Webhook(SECRET).verify(body, headers("msg_abc", now, signature))
    assert payload == json.loads(body)


@pytest.mark.parametrize(
    ("msg_id", "body"),
    [
        ("msg_other", b'{"test": 2432232314}'),
        ("msg_abc", b'{"test": 2432232315}'),
    ],
)
def test_a_changed_id_or_body_does_not_verify(msg_id: str, body: bytes) -> None:
    now = int(time.time())
    signature = signature_header([SECRET], "msg_abc", now, b'{"test": 2432232314}')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers(msg_id, now, signature))


def test_a_changed_timestamp_does_not_verify() -> None:
    now = int(time.time())
    signature = signature_header([SECRET], "msg_abc", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers("msg_abc", now - 1, signature))


def test_two_secrets_give_two_signatures_each_verifying_with_its_own_secret() -> None:
    now = int(time.time())
    header = signature_header([SECRET, OTHER_SECRET], "msg_abc", now, BODY)
    first, second = header.split(" ")
    assert first == sign(SECRET, "msg_abc", now, BODY)
    assert second == sign(OTHER_SECRET, "msg_abc", now, BODY)
    assert first != second
    for secret in (SECRET, OTHER_SECRET):
        Webhook(secret).verify(BODY, headers("msg_abc", now, header))
    stranger = "whsec_" + base64.b64encode(b"not one of the two").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers("msg_abc", now, header))


def test_no_secret_gives_no_signature() -> None:
    assert signature_header([], MSG_ID, TIMESTAMP, BODY) == ""


def test_an_empty_body_is_signed() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_get", now, b"")
    Webhook(SECRET).verify(b"", headers("msg_get", now, signature), json_parse=False)


def test_the_whsec_prefix_and_surrounding_space_are_optional() -> None:
    bare = SECRET.removeprefix("whsec_")
    assert sign(bare, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert sign(f"  {SECRET}\n", MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert secret_key(SECRET) == base64.b64decode(bare)


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_not*base64!!",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw~~",
        "hunter2 is my password",
        "whsec_ä",
    ],
)
def test_a_secret_that_is_not_base64_is_refused_without_showing_it(secret: str) -> None:
    with pytest.raises(SigningSecretError) as raised:
        sign(secret, MSG_ID, TIMESTAMP, BODY)
    message = str(raised.value)
    assert "whsec_<base64>" in message
    assert secret not in message
    assert secret.removeprefix("whsec_") not in message
    assert raised.value.__cause__ is None  # no chained error quoting it either
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("secret", ["", "whsec_", "   "])
def test_an_empty_secret_is_refused(secret: str) -> None:
    with pytest.raises(SigningSecretError, match="empty"):
        secret_key(secret)


@settings(max_examples=60, deadline=None)
@given(
    msg_id=st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True),
    body=st.text(max_size=300),
    key=st.binary(min_size=1, max_size=64),
)
def test_any_signature_verifies_with_the_reference_library(
    msg_id: str, body: str, key: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    now = int(time.time())
    data = body.encode("utf-8", errors="surrogatepass")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # a body is always valid UTF-8 JSON; the library decodes it
    signature = signature_header([secret], msg_id, now, data)
    Webhook(secret).verify(text, headers(msg_id, now, signature), json_parse=False)
