import io
import logging
import threading

import pytest

from imgsync.redact import RedactingFilter, redact, redact_url, register_secret

# The downloadUrl of the catalog.productImage.get example in the Bitrix24 docs, as the raw JSON response has it.
DOCS_DOWNLOAD_URL_JSON = (
    r'"downloadUrl":"http:\/\/dev.bx\/rest\/download.json?sessid=ae1ada0e5c85babd18ce4af4c702d1d9'
    r"\u0026token=catalog%7CaWQ9NzY1MSZf...%7CImRvd25sb2Fk...Ii.8jeG4p%2BO6LZSDNqaRR3XdTAM6jSSD4Gtye8zm6Q5Y14%3D"
    r'","id":1'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # webhook URLs
        (
            "https://example.bitrix24.com/rest/1/abcdef123456/",
            "https://example.bitrix24.com/rest/1/***/",
        ),
        (
            "POST https://example.bitrix24.com/rest/17/k3j5h6g7f8d9s0a1/catalog.productImage.get failed: 503",
            "POST https://example.bitrix24.com/rest/17/***/catalog.productImage.get failed: 503",
        ),
        (
            "https://example.bitrix24.com/rest/1/abcdef123456",
            "https://example.bitrix24.com/rest/1/***",
        ),
        (
            r'{"url": "https:\/\/example.bitrix24.com\/rest\/1\/abcdef123456\/batch.json"}',
            r'{"url": "https:\/\/example.bitrix24.com\/rest\/1\/***\/batch.json"}',
        ),
        # downloadUrl: the docs' example, decoded and raw
        (
            "http://dev.bx/rest/download.json?sessid=ae1ada0e5c85babd18ce4af4c702d1d9&token=catalog%7CaWQ9NzY1MSZf"
            "...%7CImRvd25sb2Fk...Ii.8jeG4p%2BO6LZSDNqaRR3XdTAM6jSSD4Gtye8zm6Q5Y14%3D",
            "http://dev.bx/rest/download.json?sessid=***&token=***",
        ),
        (
            DOCS_DOWNLOAD_URL_JSON,
            r'"downloadUrl":"http:\/\/dev.bx\/rest\/download.json?sessid=***\u0026token=***","id":1',
        ),
        # an OAuth download link and an OAuth REST call
        (
            "https://example.bitrix24.com/rest/download.json?auth=d5f2a8b4000735b1&token=disk%7CaWQ9MQ%3D%3D",
            "https://example.bitrix24.com/rest/download.json?auth=***&token=***",
        ),
        (
            "https://example.bitrix24.com/rest/catalog.productImage.get?auth=d5f2a8b4000735b1&productId=1&id=2",
            "https://example.bitrix24.com/rest/catalog.productImage.get?auth=***&productId=1&id=2",
        ),
        # the token endpoint: query string and JSON answer
        (
            "https://oauth.bitrix.info/oauth/token/?grant_type=refresh_token&client_id=local.1&"
            "client_secret=Zx9Yw8Vu7&refresh_token=c5e9b00070f3",
            "https://oauth.bitrix.info/oauth/token/?grant_type=refresh_token&client_id=local.1&"
            "client_secret=***&refresh_token=***",
        ),
        (
            '{"access_token": "d5f2a8b4000735b1", "expires_in": 3600, "refresh_token":"c5e9b00070f3", '
            '"member_id": "a1b2"}',
            '{"access_token": "***", "expires_in": 3600, "refresh_token":"***", "member_id": "a1b2"}',
        ),
        (r'{"auth": "ab\"cd", "id": 1}', '{"auth": "***", "id": 1}'),
        ("{'auth': 'd5f2a8b4000735b1', 'productId': 1}", "{'auth': '***', 'productId': 1}"),
        ("retrying with auth=d5f2a8b4000735b1, attempt 2", "retrying with auth=***, attempt 2"),
        ("password=hunter22; user=bob", "password=***; user=bob"),
        # S3 presigned URLs, both signature versions
        (
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101"
            "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Signature=0a1b2c3d",
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
            "&X-Amz-Date=20240101T000000Z&X-Amz-Signature=***",
        ),
        (
            "https://b.s3.amazonaws.com/k.jpg?AWSAccessKeyId=AKIAEXAMPLE&Expires=1700000000&Signature=abc%2Bdef",
            "https://b.s3.amazonaws.com/k.jpg?AWSAccessKeyId=***&Expires=1700000000&Signature=***",
        ),
        # userinfo and bearer tokens
        ("proxy https://bob:s3cret@proxy.local:3128/ down", "proxy https://***@proxy.local:3128/ down"),
        ("Authorization: Bearer eyJhbGciOi.x-y_z", "Authorization: Bearer ***"),
    ],
)
def test_redact_hides_secrets(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "",
        "downloaded 12:345 (2.1 MiB) in 0.4s",
        "https://example.bitrix24.com/rest/catalog.productImage.get",
        "https://example.bitrix24.com/upload/iblock/6f1/bkm7jmwso31wisk423gtp28iagy2e8v0/test.jpeg",
        "productId=12&id=345&select[]=name",
        "tokens=5 author=bob authority=x my_auth=1 oauth=2",
        '{"productId": 1, "name": "auth.jpg"}',
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_registered_secret_is_hidden_everywhere_also_percent_encoded():
    register_secret("s3cr3t/value+1")
    assert redact("x s3cr3t/value+1 y s3cr3t%2Fvalue%2B1 z") == "x *** y *** z"


def test_short_and_empty_secrets_are_ignored():
    register_secret("12345")
    register_secret("")
    register_secret(None)
    assert redact("product 12345") == "product 12345"


def test_register_secret_is_thread_safe():
    secrets = [f"thread-secret-{i:04d}" for i in range(200)]
    threads = [
        threading.Thread(target=lambda chunk=secrets[i::8]: [register_secret(s) for s in chunk])
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = " ".join(secrets)
    assert redact(text) == " ".join(["***"] * len(secrets))


def test_longer_secret_containing_a_shorter_one_is_hidden_whole():
    register_secret("regtest-secret")
    register_secret("regtest-secret-longer")
    assert redact("<regtest-secret-longer>") == "<***>"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://bob:pw@example.bitrix24.com/rest/1/abcdef123456/",
            "https://example.bitrix24.com/rest/1/***/",
        ),
        ("https://***@example.bitrix24.com/x", "https://example.bitrix24.com/x"),
        (
            "http://dev.bx/rest/download.json?sessid=ae1ada0e5c85&token=catalog%7Cx",
            "http://dev.bx/rest/download.json?sessid=***&token=***",
        ),
        ("https://example.com/a?b=c#frag", "https://example.com/a?b=c#frag"),
        ("", ""),
        (None, ""),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


@pytest.fixture
def captured():
    logger = logging.getLogger("imgsync.test_redact")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    yield logger, handler, stream
    logger.removeHandler(handler)


def test_log_lines_are_redacted_after_formatting(captured):
    logger, handler, stream = captured
    handler.addFilter(RedactingFilter())
    logger.info("GET %s -> %d", "https://example.bitrix24.com/rest/1/abcdef123456/profile", 200)
    logger.warning("token answer: %r", {"access_token": "d5f2a8b4000735b1"})
    logger.info({"auth": "d5f2a8b4000735b1"})
    assert stream.getvalue() == (
        "INFO GET https://example.bitrix24.com/rest/1/***/profile -> 200\n"
        "WARNING token answer: {'access_token': '***'}\n"
        "INFO {'auth': '***'}\n"
    )


def test_exception_text_is_redacted(captured):
    logger, handler, stream = captured
    handler.addFilter(RedactingFilter())
    try:
        raise ValueError("bad link http://dev.bx/rest/download.json?sessid=ae1ada0e5c85&token=catalog%7Cx")
    except ValueError:
        logger.exception("download of %s failed", "12:345")
    output = stream.getvalue()
    assert output.startswith("ERROR download of 12:345 failed\nTraceback (most recent call last):\n")
    assert output.endswith("ValueError: bad link http://dev.bx/rest/download.json?sessid=***&token=***\n")
    assert "ae1ada0e5c85" not in output


def test_broken_format_arguments_do_not_leak(captured):
    logger, handler, stream = captured
    handler.addFilter(RedactingFilter())
    logger.info("two %s %s", "auth=d5f2a8b4000735b1")  # one argument short
    assert "d5f2a8b4000735b1" not in stream.getvalue()
    assert "auth=***" in stream.getvalue()
