"""Signature checks against the platforms' own published examples, and their failure modes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr

from connectors.signatures import (
    SignatureError,
    sign_hmac_sha256,
    sign_hub_sha256,
    sign_slack,
    sign_twilio,
    verify_hmac_sha256,
    verify_hub_sha256,
    verify_slack,
    verify_telegram_secret,
    verify_twilio,
)

# Slack's worked example from "Verifying requests from Slack".
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = "1531420618"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

# Twilio's worked example from its webhook security documentation.
TWILIO_TOKEN = "12345"
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
TWILIO_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def reason_of(call: object) -> str:
    with pytest.raises(SignatureError) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason


class TestSlack:
    def test_published_example_signs_and_verifies(self) -> None:
        assert sign_slack(SLACK_SECRET, SLACK_TIMESTAMP, SLACK_BODY) == SLACK_SIGNATURE
        verify_slack(
            SecretStr(SLACK_SECRET),
            timestamp=SLACK_TIMESTAMP,
            signature=SLACK_SIGNATURE,
            body=SLACK_BODY,
            now=int(SLACK_TIMESTAMP) + 10,
        )

    def test_tampered_body_is_refused(self) -> None:
        assert (
            reason_of(
                lambda: verify_slack(
                    SLACK_SECRET,
                    timestamp=SLACK_TIMESTAMP,
                    signature=SLACK_SIGNATURE,
                    body=SLACK_BODY + b"&x=1",
                    now=int(SLACK_TIMESTAMP),
                )
            )
            == "bad_signature"
        )

    @pytest.mark.parametrize("skew", [-301, 301, 86_400])
    def test_stale_or_future_timestamp_is_refused_even_when_signed(self, skew: int) -> None:
        assert (
            reason_of(
                lambda: verify_slack(
                    SLACK_SECRET,
                    timestamp=SLACK_TIMESTAMP,
                    signature=SLACK_SIGNATURE,
                    body=SLACK_BODY,
                    now=int(SLACK_TIMESTAMP) + skew,
                )
            )
            == "stale_timestamp"
        )

    @pytest.mark.parametrize(
        ("timestamp", "signature", "reason"),
        [
            (None, SLACK_SIGNATURE, "missing_signature"),
            (SLACK_TIMESTAMP, None, "missing_signature"),
            (SLACK_TIMESTAMP, "", "missing_signature"),
            ("yesterday", SLACK_SIGNATURE, "bad_signature"),
            (SLACK_TIMESTAMP, "v0=" + "0" * 64, "bad_signature"),
            (SLACK_TIMESTAMP, "v0=é" * 3, "bad_signature"),
            (SLACK_TIMESTAMP, "v0=" + "a" * 5000, "bad_signature"),
        ],
    )
    def test_missing_or_malformed_headers(
        self, timestamp: str | None, signature: str | None, reason: str
    ) -> None:
        assert (
            reason_of(
                lambda: verify_slack(
                    SLACK_SECRET, timestamp=timestamp, signature=signature, body=SLACK_BODY, now=1531420618
                )
            )
            == reason
        )


class TestHubSignature:
    BODY = b'{"object":"whatsapp_business_account","entry":[]}'

    def test_is_hmac_sha256_hex_of_the_raw_body(self) -> None:
        expected = "sha256=" + hmac.new(b"app-secret", self.BODY, hashlib.sha256).hexdigest()
        assert sign_hub_sha256("app-secret", self.BODY) == expected
        verify_hub_sha256(SecretStr("app-secret"), header=expected, body=self.BODY)
        verify_hub_sha256(
            b"app-secret", header=expected.upper().replace("SHA256=", "sha256="), body=self.BODY
        )

    def test_wrong_secret_body_or_prefix_is_refused(self) -> None:
        good = sign_hub_sha256("app-secret", self.BODY)
        assert reason_of(lambda: verify_hub_sha256("other", header=good, body=self.BODY)) == "bad_signature"
        assert reason_of(lambda: verify_hub_sha256("app-secret", header=good, body=self.BODY + b" ")) == (
            "bad_signature"
        )
        assert reason_of(lambda: verify_hub_sha256("app-secret", header=good[7:], body=self.BODY)) == (
            "bad_signature"
        )
        assert reason_of(lambda: verify_hub_sha256("app-secret", header=None, body=self.BODY)) == (
            "missing_signature"
        )

    def test_error_never_contains_the_secret(self) -> None:
        with pytest.raises(SignatureError) as caught:
            verify_hmac_sha256("super-secret-value", header="sha256=00", body=b"x", name="X-Sig")
        assert "super-secret-value" not in str(caught.value)
        assert "X-Sig" in str(caught.value)

    def test_custom_prefix(self) -> None:
        header = sign_hmac_sha256("k", b"body", prefix="v1=")
        verify_hmac_sha256("k", header=header, body=b"body", prefix="v1=")
        assert reason_of(lambda: verify_hmac_sha256("k", header=header, body=b"body")) == "bad_signature"


class TestTwilio:
    def test_published_example(self) -> None:
        assert sign_twilio(TWILIO_TOKEN, TWILIO_URL, TWILIO_PARAMS) == TWILIO_SIGNATURE
        verify_twilio(SecretStr(TWILIO_TOKEN), header=TWILIO_SIGNATURE, url=TWILIO_URL, params=TWILIO_PARAMS)

    def test_parameter_order_does_not_matter_but_values_do(self) -> None:
        shuffled = list(reversed(list(TWILIO_PARAMS.items())))
        verify_twilio(TWILIO_TOKEN, header=TWILIO_SIGNATURE, url=TWILIO_URL, params=shuffled)
        changed = {**TWILIO_PARAMS, "Digits": "4321"}
        assert reason_of(
            lambda: verify_twilio(TWILIO_TOKEN, header=TWILIO_SIGNATURE, url=TWILIO_URL, params=changed)
        ) == ("bad_signature")

    def test_default_port_written_or_omitted_both_verify(self) -> None:
        with_port = TWILIO_URL.replace("mycompany.com", "mycompany.com:443")
        verify_twilio(TWILIO_TOKEN, header=TWILIO_SIGNATURE, url=with_port, params=TWILIO_PARAMS)
        signed_with_port = sign_twilio(TWILIO_TOKEN, with_port, TWILIO_PARAMS)
        verify_twilio(TWILIO_TOKEN, header=signed_with_port, url=TWILIO_URL, params=TWILIO_PARAMS)

    def test_other_url_is_refused(self) -> None:
        for url in (
            TWILIO_URL.replace("https", "http"),
            TWILIO_URL.replace("mycompany.com", "mycompany.com:8443"),
            TWILIO_URL.split("?")[0],
        ):
            assert (
                reason_of(
                    lambda url=url: verify_twilio(
                        TWILIO_TOKEN, header=TWILIO_SIGNATURE, url=url, params=TWILIO_PARAMS
                    )
                )
                == "bad_signature"
            )

    def test_repeated_parameters_are_sorted_by_value(self) -> None:
        pairs = [("MediaUrl", "b"), ("Body", "x"), ("MediaUrl", "a")]
        data = "https://h/p" + "Bodyx" + "MediaUrla" + "MediaUrlb"
        expected = base64.b64encode(hmac.new(b"t", data.encode(), hashlib.sha1).digest()).decode()
        assert sign_twilio("t", "https://h/p", pairs) == expected


class TestTelegram:
    def test_exact_token_only(self) -> None:
        verify_telegram_secret(SecretStr("A-z_09"), "A-z_09")
        assert reason_of(lambda: verify_telegram_secret("A-z_09", "A-z_0")) == "bad_signature"
        assert reason_of(lambda: verify_telegram_secret("A-z_09", "a-z_09")) == "bad_signature"
        assert reason_of(lambda: verify_telegram_secret("A-z_09", None)) == "missing_signature"
