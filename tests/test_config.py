import re
from pathlib import Path

import pytest

from imgsync.config import Settings, load_settings, validate_for_sync
from imgsync.errors import ConfigError
from imgsync.redact import redact

REPO = Path(__file__).resolve().parent.parent
WEBHOOK = "https://example.bitrix24.com/rest/1/wh0123456789code/"
CODE = "wh0123456789code"


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.fixture(autouse=True)
def no_imgsync_env(monkeypatch):
    """Keep the developer's IMGSYNC_* variables out of every test."""
    import os

    for name in list(os.environ):
        if name.startswith("IMGSYNC_"):
            monkeypatch.delenv(name)


def write(folder: Path, text: str, name: str = "imgsync.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path, text=None, *, env=None, overrides=None, config_path=None):
    if text is not None:
        write(tmp_path, text)
    return load_settings(config_path, env=env or {}, overrides=overrides, cwd=tmp_path)


def config_error(tmp_path, text=None, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return str(info.value)


# --- defaults and finding the file ---------------------------------------------------------------------------


def test_defaults_without_any_file(tmp_path):
    settings = load(tmp_path)
    assert settings == Settings(dest=tmp_path / "images", db=tmp_path / "imgsync.db")
    assert settings.webhook_url is None
    assert settings.token_url == "https://oauth.bitrix.info/oauth/token/"
    assert (settings.rate_limit, settings.burst, settings.timeout, settings.workers) == (
        2.0,
        50,
        30.0,
        0,
    )  # auto
    assert (settings.keep_local, settings.s3_enabled, settings.s3_bucket) == (True, False, "")
    assert settings.config_path is None
    assert settings.auth_mode is None


def test_example_config_loads_and_documents_every_key():
    settings = load_settings(REPO / "config.example.toml", env={}, cwd=REPO)
    assert settings.webhook_url == "https://example.bitrix24.com/rest/1/abcdef123456/"
    assert settings.auth_mode == "webhook"
    assert settings.dest == REPO / "images"
    assert settings.db == REPO / "imgsync.db"
    assert settings.config_path == REPO / "config.example.toml"
    text = (REPO / "config.example.toml").read_text()
    for key in (
        "webhook_url",
        "portal_url",
        "client_id",
        "client_secret",
        "access_token",
        "refresh_token",
        "token_url",
        "rate_limit",
        "burst",
        "timeout",
        "dest",
        "db",
        "keep_local",
        "enabled",
        "bucket",
        "prefix",
        "endpoint_url",
        "workers",
        "max_duration",
        "max_downloads",
        "max_bytes",
        "log_file",
        "textfile",
        "keep_events_days",
    ):
        assert re.search(rf"^#? ?{key} = ", text, re.M), key


def test_imgsync_toml_in_the_working_directory_is_found(tmp_path):
    write(tmp_path, "[sync]\nworkers = 8\n")
    settings = load(tmp_path)
    assert settings.workers == 8
    assert settings.config_path == tmp_path / "imgsync.toml"


def test_imgsync_config_variable_beats_the_working_directory(tmp_path):
    write(tmp_path, "[sync]\nworkers = 8\n")
    write(tmp_path / "etc", "[sync]\nworkers = 9\n", "other.toml")
    settings = load(tmp_path, env={"IMGSYNC_CONFIG": "etc/other.toml"})
    assert settings.workers == 9
    assert settings.config_path == tmp_path / "etc" / "other.toml"


def test_config_path_argument_beats_the_variable(tmp_path):
    write(tmp_path, "[sync]\nworkers = 8\n", "a.toml")
    write(tmp_path, "[sync]\nworkers = 9\n", "b.toml")
    settings = load(tmp_path, env={"IMGSYNC_CONFIG": "b.toml"}, config_path=tmp_path / "a.toml")
    assert settings.workers == 8


def test_environment_is_read_from_os_environ_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSYNC_WORKERS", "7")
    assert load_settings(cwd=tmp_path).workers == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config_path": "missing.toml"}, "cannot read config file missing.toml: No such file or directory"),
        (
            {"env": {"IMGSYNC_CONFIG": "gone.toml"}},
            "cannot read config file gone.toml: No such file or directory",
        ),
    ],
)
def test_a_named_config_file_must_exist(tmp_path, kwargs, message):
    assert config_error(tmp_path, **kwargs) == message


def test_a_directory_is_not_a_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    assert config_error(tmp_path, config_path="conf") == "cannot read config file conf: Is a directory"


# --- precedence and paths ------------------------------------------------------------------------------------


def test_precedence_file_then_environment_then_flags(tmp_path):
    text = (
        "[storage]\ndest = 'from-file'\ndb = 'file.db'\n[sync]\nworkers = 2\n[s3]\nbucket = 'file-bucket'\n"
    )
    env = {"IMGSYNC_DEST": "from-env", "IMGSYNC_WORKERS": "3"}
    overrides = {"dest": "from-flag", "workers": None, "s3_bucket": None, "db": None}
    settings = load(tmp_path, text, env=env, overrides=overrides)
    assert settings.dest == tmp_path / "from-flag"  # flag > env > file
    assert settings.workers == 3  # env > file; a flag of None was not given
    assert settings.db == tmp_path / "file.db"  # file > default
    assert settings.s3_bucket == "file-bucket"


def test_webhook_precedence(tmp_path):
    other = "https://other.bitrix24.com/rest/2/zz0123456789/"
    flag = "https://flag.bitrix24.com/rest/3/ff0123456789"
    text = f"[bitrix24]\nwebhook_url = '{WEBHOOK}'\n"
    assert load(tmp_path, text).webhook_url == WEBHOOK
    assert load(tmp_path, text, env={"IMGSYNC_WEBHOOK_URL": other}).webhook_url == other
    settings = load(tmp_path, text, env={"IMGSYNC_WEBHOOK_URL": other}, overrides={"webhook_url": flag})
    assert settings.webhook_url == flag + "/"


def test_empty_environment_variables_count_as_unset(tmp_path):
    settings = load(tmp_path, "[sync]\nworkers = 5\n", env={"IMGSYNC_WORKERS": "", "IMGSYNC_DEST": " "})
    assert settings.workers == 5
    assert settings.dest == tmp_path / "images"


def test_relative_paths_in_the_file_are_resolved_against_its_folder(tmp_path):
    conf = write(tmp_path / "etc" / "imgsync", "[storage]\ndest = 'backup'\ndb = '../state/img.db'\n")
    settings = load(tmp_path / "work", config_path=conf)
    assert settings.dest == tmp_path / "etc" / "imgsync" / "backup"
    assert settings.db == tmp_path / "etc" / "imgsync" / "../state/img.db"


def test_relative_paths_from_environment_and_flags_are_resolved_against_cwd(tmp_path):
    conf = write(tmp_path / "etc", "[storage]\ndest = 'backup'\ndb = 'img.db'\n")
    cwd = tmp_path / "work"
    settings = load_settings(
        conf, env={"IMGSYNC_DEST": "env-images"}, overrides={"db": Path("flag.db")}, cwd=cwd
    )
    assert settings.dest == cwd / "env-images"
    assert settings.db == cwd / "flag.db"


def test_absolute_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    absolute = tmp_path / "abs"
    settings = load(tmp_path, f"[storage]\ndest = '{absolute}'\ndb = '~/img.db'\n")
    assert settings.dest == absolute
    assert settings.db == tmp_path / "home" / "img.db"


def test_all_file_keys_map_to_settings(tmp_path):
    text = """
[bitrix24]
rate_limit = 5
burst = 250
timeout = 12.5
[storage]
keep_local = false
[s3]
enabled = true
bucket = "backups"
prefix = "bitrix24/images/"
endpoint_url = "http://127.0.0.1:9000"
[sync]
workers = 64
"""
    settings = load(tmp_path, text)
    assert settings.rate_limit == 5.0 and isinstance(settings.rate_limit, float)
    assert (settings.burst, settings.timeout, settings.keep_local) == (250, 12.5, False)
    assert (settings.s3_enabled, settings.s3_bucket, settings.s3_prefix) == (
        True,
        "backups",
        "bitrix24/images/",
    )
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.workers == 64


def test_s3_environment_variables(tmp_path):
    env = {"IMGSYNC_S3_BUCKET": "env-bucket", "IMGSYNC_S3_ENDPOINT_URL": "https://minio.local"}
    settings = load(tmp_path, env=env)
    assert (settings.s3_bucket, settings.s3_endpoint_url) == ("env-bucket", "https://minio.local")


def test_unknown_override_is_a_programming_error(tmp_path):
    with pytest.raises(TypeError, match=exactly("load_settings() got an unknown override 'desst'")):
        load(tmp_path, overrides={"desst": "x"})


# --- unknown keys, wrong types, bad TOML ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage]\ndst = 'x'\n", "imgsync.toml: unknown key 'storage.dst'; did you mean 'storage.dest'?"),
        ("[sync]\ndest = 'x'\n", "imgsync.toml: unknown key 'sync.dest'; did you mean 'storage.dest'?"),
        (
            "[bitrix24]\nwebhook = 'x'\n",
            "imgsync.toml: unknown key 'bitrix24.webhook'; did you mean 'bitrix24.webhook_url'?",
        ),
        ("[storag]\ndest = 'x'\n", "imgsync.toml: unknown key 'storag'; did you mean 'storage'?"),
        ("workers = 4\n", "imgsync.toml: unknown key 'workers'; did you mean 'sync.workers'?"),
        ("[s3]\nregion = 'eu'\n", "imgsync.toml: unknown key 's3.region'"),
        (
            "[s3]\nbucket_name = 'b'\n",
            "imgsync.toml: unknown key 's3.bucket_name'; did you mean 's3.bucket'?",
        ),
        (
            "[s3]\nsecret = 'b'\n",
            "imgsync.toml: unknown key 's3.secret'; did you mean 'bitrix24.client_secret'?",
        ),
        ("[sync]\nworker = 2\n", "imgsync.toml: unknown key 'sync.worker'; did you mean 'sync.workers'?"),
        ("[logging]\nlevel = 'debug'\n", "imgsync.toml: unknown key 'logging'"),
        ("[storage.extra]\nx = 1\n", "imgsync.toml: unknown key 'storage.extra'"),
        ("storage = 'images'\n", "imgsync.toml: storage must be a table ([storage]), got 'images'"),
    ],
)
def test_unknown_keys_are_errors(tmp_path, text, message):
    assert config_error(tmp_path, text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[bitrix24]\nrate_limit = 'fast'",
            "imgsync.toml: bitrix24.rate_limit must be a positive number, got 'fast'",
        ),
        ("[bitrix24]\nrate_limit = 0", "imgsync.toml: bitrix24.rate_limit must be a positive number, got 0"),
        (
            "[bitrix24]\nrate_limit = inf",
            "imgsync.toml: bitrix24.rate_limit must be a positive number, got inf",
        ),
        (
            "[bitrix24]\nrate_limit = true",
            "imgsync.toml: bitrix24.rate_limit must be a positive number, got true",
        ),
        ("[bitrix24]\ntimeout = -1.5", "imgsync.toml: bitrix24.timeout must be a positive number, got -1.5"),
        ("[bitrix24]\nburst = 0", "imgsync.toml: bitrix24.burst must be a whole number of at least 1, got 0"),
        (
            "[bitrix24]\nburst = 1.5",
            "imgsync.toml: bitrix24.burst must be a whole number of at least 1, got 1.5",
        ),
        (
            "[sync]\nworkers = 65",
            'imgsync.toml: sync.workers must be "auto" or a whole number from 1 to 64, got 65',
        ),
        (
            "[sync]\nworkers = '4'",
            "imgsync.toml: sync.workers must be \"auto\" or a whole number from 1 to 64, got '4'",
        ),
        ("[storage]\nkeep_local = 'no'", "imgsync.toml: storage.keep_local must be true or false, got 'no'"),
        ("[s3]\nenabled = 1", "imgsync.toml: s3.enabled must be true or false, got 1"),
        ("[s3]\nbucket = 5", "imgsync.toml: s3.bucket must be a string, got 5"),
        ("[storage]\ndest = ''", "imgsync.toml: storage.dest must be a non-empty path, got ''"),
        ("[storage]\ndb = ['a']", "imgsync.toml: storage.db must be a non-empty path, got ['a']"),
        (
            "[s3]\nendpoint_url = 'minio:9000'",
            "imgsync.toml: s3.endpoint_url must be an http:// or https:// URL, got 'minio:9000'",
        ),
        (
            "[bitrix24]\ntoken_url = 'ftp://x'",
            "imgsync.toml: bitrix24.token_url must be an http:// or https:// URL, got 'ftp://x'",
        ),
    ],
)
def test_wrong_types_name_file_and_key(tmp_path, text, message):
    assert config_error(tmp_path, text) == message


def test_long_values_are_shortened_in_messages(tmp_path):
    message = config_error(tmp_path, f"[bitrix24]\nrate_limit = '{'x' * 200}'")
    assert message == f"imgsync.toml: bitrix24.rate_limit must be a positive number, got '{'x' * 56}..."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[sync]\nworkers = 4\n[storage\n",
            "imgsync.toml:3: invalid TOML: Expected ']' at the end of a table declaration (column 9)",
        ),
        ("[sync]\n\nworkers = \n", "imgsync.toml:3: invalid TOML: Invalid value (column 11)"),
        (
            "[sync]\nworkers = 1\nworkers = 2\n",
            "imgsync.toml:3: invalid TOML: Cannot overwrite a value (column 12)",
        ),
    ],
)
def test_toml_syntax_errors_name_file_and_line(tmp_path, text, message):
    assert config_error(tmp_path, text) == message


def test_config_file_that_is_not_utf8(tmp_path):
    (tmp_path / "imgsync.toml").write_bytes(b"[sync]\nworkers = 4 # \xff\xfe\n")
    assert config_error(tmp_path) == "imgsync.toml: not valid UTF-8 text"


def test_errors_name_the_file_as_given(tmp_path):
    write(tmp_path / "etc", "[sync]\nworkers = 0\n", "prod.toml")
    message = config_error(tmp_path, config_path="etc/prod.toml")
    assert message == 'etc/prod.toml: sync.workers must be "auto" or a whole number from 1 to 64, got 0'


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        (
            {"IMGSYNC_WORKERS": "many"},
            None,
            "IMGSYNC_WORKERS must be \"auto\" or a whole number from 1 to 64, got 'many'",
        ),
        (
            {"IMGSYNC_WORKERS": "0"},
            None,
            "IMGSYNC_WORKERS must be \"auto\" or a whole number from 1 to 64, got '0'",
        ),
        (
            {"IMGSYNC_S3_ENDPOINT_URL": "minio"},
            None,
            "IMGSYNC_S3_ENDPOINT_URL must be an http:// or https:// URL, got 'minio'",
        ),
        ({}, {"workers": 100}, '--workers must be "auto" or a whole number from 1 to 64, got 100'),
        ({}, {"rate_limit": -1}, "--rate-limit must be a positive number, got -1"),
        ({}, {"s3_enabled": "yes"}, "--s3/--no-s3 must be true or false, got 'yes'"),
        ({}, {"dest": ""}, "--dest must be a non-empty path, got ''"),
    ],
)
def test_environment_and_flag_errors_name_the_variable_or_flag(tmp_path, env, overrides, message):
    assert config_error(tmp_path, env=env, overrides=overrides) == message


# --- the webhook ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (WEBHOOK, WEBHOOK),
        ("https://example.bitrix24.com/rest/1/wh0123456789code", WEBHOOK),
        ("  https://example.bitrix24.com/rest/1/wh0123456789code/  ", WEBHOOK),
        (
            "HTTP://portal.local:8080/rest/12/wh0123456789code/",
            "http://portal.local:8080/rest/12/wh0123456789code/",
        ),
    ],
)
def test_webhook_is_normalised(tmp_path, value, expected):
    assert load(tmp_path, env={"IMGSYNC_WEBHOOK_URL": value}).webhook_url == expected


SHAPE = "IMGSYNC_WEBHOOK_URL must look like https://<portal>/rest/<user_id>/<code>/"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            WEBHOOK + "catalog.productImage.get",
            f"{SHAPE}, without a method name: remove 'catalog.productImage.get' from the end",
        ),
        (WEBHOOK + "profile.json", f"{SHAPE}, without a method name: remove 'profile.json' from the end"),
        ("https://example.bitrix24.com/rest/wh0123456789code/", SHAPE),
        ("https://example.bitrix24.com/wh0123456789code/", SHAPE),
        ("example.bitrix24.com/rest/1/wh0123456789code/", f"{SHAPE} (http:// or https://)"),
        ("ftp://example.bitrix24.com/rest/1/wh0123456789code/", f"{SHAPE} (http:// or https://)"),
        ("https:///rest/1/wh0123456789code/", f"{SHAPE}; the portal's host name is missing"),
        (
            "https://a:b@example.bitrix24.com/rest/1/wh0123456789code/",
            f"{SHAPE}, without a user name or password",
        ),
        (WEBHOOK + "?auth=1", f"{SHAPE}, without a query string"),
    ],
)
def test_bad_webhooks_are_refused_without_showing_the_code(tmp_path, value, message):
    got = config_error(tmp_path, env={"IMGSYNC_WEBHOOK_URL": value})
    assert got == message
    assert CODE not in got


def test_webhook_code_is_registered_as_a_secret(tmp_path):
    load(tmp_path, f"[bitrix24]\nwebhook_url = '{WEBHOOK}'\n")
    assert redact(f"the code is {CODE}") == "the code is ***"


def test_repr_hides_secrets(tmp_path):
    settings = Settings(webhook_url=WEBHOOK, client_secret="cs-0123456789", access_token="at-0123456789")
    text = repr(settings)
    assert "webhook_url='https://example.bitrix24.com/rest/1/***/'" in text
    assert "client_secret='***'" in text and "access_token='***'" in text
    assert CODE not in text and "0123456789" not in text


# --- OAuth ---------------------------------------------------------------------------------------------------

OAUTH_FILE = """
[bitrix24]
portal_url = "https://example.bitrix24.com"
client_id = "local.64a1b2c3d4e5f6.12345678"
client_secret = "Cs0123456789SecretValue"
refresh_token = "rt-0123456789abcdef"
"""


def test_oauth_settings(tmp_path):
    settings = load(tmp_path, OAUTH_FILE, env={"IMGSYNC_ACCESS_TOKEN": "at-0123456789abcdef"})
    assert settings.auth_mode == "oauth"
    assert settings.portal_url == "https://example.bitrix24.com/"
    assert settings.client_id == "local.64a1b2c3d4e5f6.12345678"
    assert (settings.access_token, settings.refresh_token) == ("at-0123456789abcdef", "rt-0123456789abcdef")
    assert settings.webhook_url is None
    # every credential is hidden from then on
    assert redact("Cs0123456789SecretValue at-0123456789abcdef rt-0123456789abcdef") == "*** *** ***"
    validate_for_sync(settings)


def test_oauth_from_the_environment(tmp_path):
    env = {
        "IMGSYNC_PORTAL_URL": "http://portal.local:8080/",
        "IMGSYNC_CLIENT_ID": "app",
        "IMGSYNC_CLIENT_SECRET": "Cs0123456789",
        "IMGSYNC_ACCESS_TOKEN": "at-0123456789",
    }
    settings = load(tmp_path, env=env)
    assert (settings.auth_mode, settings.portal_url) == ("oauth", "http://portal.local:8080/")


def test_incomplete_oauth(tmp_path):
    message = config_error(tmp_path, "[bitrix24]\nclient_id = 'app'\nclient_secret = 'Cs0123456789'\n")
    assert message == (
        "incomplete OAuth settings (bitrix24.client_id in imgsync.toml): missing bitrix24.portal_url "
        "(IMGSYNC_PORTAL_URL), bitrix24.access_token or bitrix24.refresh_token (IMGSYNC_ACCESS_TOKEN, "
        "IMGSYNC_REFRESH_TOKEN)"
    )


def test_webhook_and_oauth_together(tmp_path):
    message = config_error(tmp_path, OAUTH_FILE, overrides={"webhook_url": WEBHOOK})
    assert message == (
        "both a webhook (--webhook) and OAuth settings (bitrix24.portal_url in imgsync.toml) are configured; "
        "use one or the other"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[bitrix24]\nportal_url = 'example.bitrix24.com'\n",
            "imgsync.toml: bitrix24.portal_url must be an http:// or https:// URL, got 'example.bitrix24.com'",
        ),
        (
            "[bitrix24]\nportal_url = 'https://example.bitrix24.com/rest/'\n",
            "imgsync.toml: bitrix24.portal_url must be the portal's address only, like https://example.bitrix24.com/, "
            "got 'https://example.bitrix24.com/rest/'",
        ),
        ("[bitrix24]\naccess_token = 12345678\n", "imgsync.toml: bitrix24.access_token must be a string"),
    ],
)
def test_bad_oauth_values(tmp_path, text, message):
    assert config_error(tmp_path, text) == message


def test_secrets_never_appear_in_messages(tmp_path):
    secret = "Cs0123456789NeverShown"
    text = f"[bitrix24]\nclient_secret = '{secret}'\nportal_url = 'https://x.bitrix24.com/?client_secret={secret}'\n"
    message = config_error(tmp_path, text)
    assert secret not in message
    assert message == (
        "imgsync.toml: bitrix24.portal_url must be the portal's address only, like https://example.bitrix24.com/, "
        "got 'https://x.bitrix24.com/?client_secret=***'"
    )


# --- validate_for_sync ---------------------------------------------------------------------------------------


def test_sync_needs_a_portal(tmp_path):
    with pytest.raises(
        ConfigError,
        match=exactly(
            "no portal configured: set bitrix24.webhook_url in imgsync.toml, IMGSYNC_WEBHOOK_URL or --webhook"
        ),
    ):
        validate_for_sync(load(tmp_path))


def test_sync_with_s3_needs_a_bucket(tmp_path):
    settings = load(tmp_path, env={"IMGSYNC_WEBHOOK_URL": WEBHOOK}, overrides={"s3_enabled": True})
    with pytest.raises(
        ConfigError,
        match=exactly(
            "S3 is enabled but no bucket is set: set s3.bucket in imgsync.toml, IMGSYNC_S3_BUCKET or --s3-bucket"
        ),
    ):
        validate_for_sync(settings)
    validate_for_sync(
        load(
            tmp_path,
            env={"IMGSYNC_WEBHOOK_URL": WEBHOOK, "IMGSYNC_S3_BUCKET": "b"},
            overrides={"s3_enabled": True},
        )
    )


def test_validate_for_sync_checks_hand_built_oauth_settings():
    with pytest.raises(
        ConfigError, match=r"^incomplete OAuth settings \(bitrix24.portal_url\): missing bitrix24.client_id"
    ):
        validate_for_sync(Settings(portal_url="https://x.bitrix24.com/"))


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().workers = 3  # type: ignore[misc]


# --- caps, logs, metrics, retention --------------------------------------------------------------------------


def test_new_keys_default_to_no_cap_no_log_no_metrics_and_180_days(tmp_path):
    settings = load(tmp_path)
    assert (settings.max_duration_s, settings.max_downloads, settings.max_bytes) == (None, None, None)
    assert (settings.log_file, settings.metrics_file, settings.keep_events_days) == (None, None, 180)


def test_caps_logs_metrics_and_retention_from_the_file(tmp_path):
    text = """
[storage]
keep_events_days = 30
[sync]
max_duration = "1h30m"
max_downloads = 5000
max_bytes = "20G"
log_file = "logs/imgsync.log"
[metrics]
textfile = "/var/lib/node_exporter/textfile/imgsync.prom"
"""
    settings = load(tmp_path, text)
    assert settings.max_duration_s == 5400.0
    assert settings.max_downloads == 5000
    assert settings.max_bytes == 20 * 1024**3
    assert settings.log_file == tmp_path / "logs" / "imgsync.log"
    assert settings.metrics_file == Path("/var/lib/node_exporter/textfile/imgsync.prom")
    assert settings.keep_events_days == 30


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90m", 5400.0),
        ("6h", 21600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("45s", 45.0),
        ("1d2h3m4s", 93784.0),
    ],
)
def test_durations(tmp_path, value, seconds):
    assert load(tmp_path, overrides={"max_duration_s": value}).max_duration_s == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("20G", 20 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1.5K", 1536),
        ("2T", 2 * 1024**4),
        ("20GiB", 20 * 1024**3),
        ("1048576", 1048576),
        ("100B", 100),
    ],
)
def test_sizes_are_powers_of_1024_or_plain_bytes(tmp_path, value, size):
    assert load(tmp_path, env={"IMGSYNC_SYNC_MAX_BYTES": value}).max_bytes == size


def test_a_plain_number_of_bytes_in_the_file(tmp_path):
    assert load(tmp_path, "[sync]\nmax_bytes = 1048576\n").max_bytes == 1048576


def test_caps_precedence_flag_over_environment_over_file(tmp_path):
    text = '[sync]\nmax_duration = "6h"\nmax_downloads = 10\nmax_bytes = "1G"\n'
    env = {
        "IMGSYNC_SYNC_MAX_DURATION": "2h",
        "IMGSYNC_SYNC_MAX_DOWNLOADS": "20",
        "IMGSYNC_SYNC_MAX_BYTES": "2G",
    }
    assert load(tmp_path, text).max_duration_s == 6 * 3600
    from_env = load(tmp_path, text, env=env)
    assert (from_env.max_duration_s, from_env.max_downloads, from_env.max_bytes) == (7200, 20, 2 * 1024**3)
    flags = {"max_duration_s": "90m", "max_downloads": "30", "max_bytes": "3G"}
    from_flags = load(tmp_path, text, env=env, overrides=flags)
    assert (from_flags.max_duration_s, from_flags.max_downloads, from_flags.max_bytes) == (
        5400,
        30,
        3 * 1024**3,
    )


def test_an_empty_log_file_or_textfile_writes_none(tmp_path):
    text = '[sync]\nlog_file = "a.log"\n[metrics]\ntextfile = ""\n'
    settings = load(tmp_path, text, overrides={"log_file": ""})
    assert (settings.log_file, settings.metrics_file) == (None, None)


def test_long_environment_names_for_the_new_keys(tmp_path):
    env = {
        "IMGSYNC_BITRIX24_RATE_LIMIT": "5",
        "IMGSYNC_BITRIX24_BURST": "250",
        "IMGSYNC_BITRIX24_TIMEOUT": "12.5",
        "IMGSYNC_STORAGE_KEEP_EVENTS_DAYS": "0",
        "IMGSYNC_SYNC_LOG_FILE": "imgsync.log",
        "IMGSYNC_METRICS_TEXTFILE": "metrics/imgsync.prom",
    }
    settings = load(tmp_path, env=env)
    assert (settings.rate_limit, settings.burst, settings.timeout) == (5.0, 250, 12.5)
    assert settings.keep_events_days == 0
    assert settings.log_file == tmp_path / "imgsync.log"
    assert settings.metrics_file == tmp_path / "metrics" / "imgsync.prom"


DURATION = "must be a duration like 90m, 6h or 1h30m (units d, h, m, s), got"
SIZE = "must be a size like 20G, 512M or a number of bytes (K, M, G, T are powers of 1024), got"


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({}, {"max_duration_s": "6 hours"}, f"--max-duration {DURATION} '6 hours'"),
        ({}, {"max_duration_s": "-1"}, f"--max-duration {DURATION} '-1'"),
        ({}, {"max_duration_s": "0m"}, f"--max-duration {DURATION} '0m'"),
        ({}, {"max_duration_s": "30m1h"}, f"--max-duration {DURATION} '30m1h'"),
        ({"IMGSYNC_SYNC_MAX_DURATION": "6"}, None, f"IMGSYNC_SYNC_MAX_DURATION {DURATION} '6'"),
        ({}, {"max_bytes": "20Q"}, f"--max-bytes {SIZE} '20Q'"),
        ({}, {"max_bytes": "-1"}, f"--max-bytes {SIZE} '-1'"),
        ({}, {"max_bytes": "0"}, f"--max-bytes {SIZE} '0'"),
        ({"IMGSYNC_SYNC_MAX_BYTES": "1.5"}, None, f"IMGSYNC_SYNC_MAX_BYTES {SIZE} '1.5'"),
        ({}, {"max_downloads": "-1"}, "--max-downloads must be a whole number of at least 1, got '-1'"),
        ({}, {"max_downloads": "ten"}, "--max-downloads must be a whole number of at least 1, got 'ten'"),
        (
            {"IMGSYNC_SYNC_MAX_DOWNLOADS": "0"},
            None,
            "IMGSYNC_SYNC_MAX_DOWNLOADS must be a whole number of at least 1, got '0'",
        ),
        (
            {"IMGSYNC_STORAGE_KEEP_EVENTS_DAYS": "-5"},
            None,
            "IMGSYNC_STORAGE_KEEP_EVENTS_DAYS must be a whole number of at least 0, got '-5'",
        ),
        ({}, {"burst": "0"}, "--burst must be a whole number of at least 1, got '0'"),
        ({}, {"timeout": "soon"}, "--timeout must be a positive number, got 'soon'"),
        ({}, {"log_file": 7}, "--log-file must be a non-empty path, got 7"),
    ],
)
def test_bad_caps_and_new_values_name_the_flag_or_variable(tmp_path, env, overrides, message):
    assert config_error(tmp_path, env=env, overrides=overrides) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sync]\nmax_duration = "6 hours"\n', f"imgsync.toml: sync.max_duration {DURATION} '6 hours'"),
        ("[sync]\nmax_duration = 3600\n", f"imgsync.toml: sync.max_duration {DURATION} 3600"),
        ('[sync]\nmax_bytes = "20Q"\n', f"imgsync.toml: sync.max_bytes {SIZE} '20Q'"),
        ("[sync]\nmax_bytes = -1\n", f"imgsync.toml: sync.max_bytes {SIZE} -1"),
        (
            '[sync]\nmax_downloads = "10"\n',
            "imgsync.toml: sync.max_downloads must be a whole number of at least 1, got '10'",
        ),
        (
            "[storage]\nkeep_events_days = 1.5\n",
            "imgsync.toml: storage.keep_events_days must be a whole number of at least 0, got 1.5",
        ),
        (
            "[metrics]\ntextfil = 'x.prom'\n",
            "imgsync.toml: unknown key 'metrics.textfil'; did you mean 'metrics.textfile'?",
        ),
        (
            "[sync]\nmax_durations = '6h'\n",
            "imgsync.toml: unknown key 'sync.max_durations'; did you mean 'sync.max_duration'?",
        ),
        (
            "[sync]\ntextfile = 'x.prom'\n",
            "imgsync.toml: unknown key 'sync.textfile'; did you mean 'metrics.textfile'?",
        ),
    ],
)
def test_bad_new_keys_in_the_file_name_file_and_key(tmp_path, text, message):
    assert config_error(tmp_path, text) == message


def test_workers_auto_from_file_env_and_flag(tmp_path: Path) -> None:
    write(tmp_path, '[sync]\nworkers = "auto"\n')
    assert load_settings(cwd=tmp_path).workers == 0  # 0 is auto
    assert load_settings(cwd=tmp_path, env={"IMGSYNC_WORKERS": "12"}).workers == 12
    assert load_settings(cwd=tmp_path, env={"IMGSYNC_WORKERS": "AUTO"}).workers == 0
    assert load_settings(cwd=tmp_path, overrides={"workers": "5"}).workers == 5
    with pytest.raises(
        ConfigError, match="--workers must be \"auto\" or a whole number from 1 to 64, got 'lots'"
    ):
        load_settings(cwd=tmp_path, overrides={"workers": "lots"})
