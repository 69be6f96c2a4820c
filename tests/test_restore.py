"""imgsync restore over real HTTP: each plan outcome, exactly once, checked bytes, --to DIR, input errors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import Portal, make_catalog
from imgsync.store import run_lock

from .conftest import FAST_CONFIG, Env, all_pairs, invoke, summary_of

#: The journal settles in seconds, not the cloud's minute: adds without an answer are looked for sooner.
RESTORE_CONFIG = FAST_CONFIG + 'timeout = 3\n[restore]\nrequest_limit = "1s"\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def renv(env: Env, isolated: Path) -> Env:
    (isolated / "imgsync.toml").write_text(RESTORE_CONFIG)
    return env


@pytest.fixture
def gallery_portal() -> Iterator[Portal]:
    """4 products of 4 images (DETAIL, MORE, DETAIL, MORE: the second DETAIL shows as a gallery picture)."""
    catalog = make_catalog(products=4, images_per_product=4, min_size=300, max_size=3000, seed=11)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as p:
        yield p


def restore_args(env: Env, portal: Portal, *extra: str) -> list[str]:
    return ["restore", "--webhook", portal.webhook_url, "--dest", str(env.dest), "--db", str(env.db), *extra]


def synced(env: Env, portal: Portal) -> dict[tuple[int, int], str]:
    """Back up every image; return (pid, iid) -> sha256 of its content."""
    result = invoke(env.args(portal, *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    return {(i.product_id, i.image_id): sha(i.content) for i in portal.images()}


def lose(env: Env, portal: Portal, *refs: tuple[int, int]) -> None:
    """Delete images on the portal and let a sync mark them missing."""
    for pid, iid in refs:
        portal.delete_image(pid, iid)
    result = invoke(env.args(portal, "--recorded"))
    assert result.exit_code == 0, result.stderr
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    assert all(rows[ref]["status"] == "missing" for ref in refs)


def more_photos(portal: Portal) -> list[tuple[int, int]]:
    return [(i.product_id, i.image_id) for i in portal.images() if i.type == "MORE_PHOTO"]


def shas_on(portal: Portal, pid: int) -> list[str]:
    return [h for _, _, h in portal.gallery(pid)]


def rows_by_ref(env: Env) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["product_id"], r["image_id"]): r for r in env.rows()}


# --- the main path ------------------------------------------------------------------------------------------------


def test_missing_images_come_back_once_checked_and_recorded(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    content = synced(renv, portal)
    gone = more_photos(portal)[:3]
    lose(renv, portal, *gone)
    portal.reset_stats()

    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["selected"], summary["restored"], summary["present"], summary["failed"]) == (3, 3, 0, 0)
    assert summary["complete"] is True and summary["run_id"] is not None
    sizes = rows_by_ref(renv)
    assert summary["bytes_sent"] == sum(sizes[ref]["size"] for ref in gone)
    assert portal.stats.adds == 3
    rows = rows_by_ref(renv)
    for item in summary["restored_images"]:
        old = (item["product_id"], item["image_id"])
        new = (item["target_product_id"], item["new_image_id"])
        assert old in gone and new[0] == old[0] and new[1] not in {i for _, i in gone}
        # The portal holds the backup's bytes once, under the new id.
        assert shas_on(portal, new[0]).count(content[old]) == 1
        # The old row says where it went; the new row is an ok backup with the same bytes on disk.
        assert rows[old]["status"] == "missing" and rows[old]["restored_as"] == new[1]
        assert rows[old]["restored_at"]
        assert rows[new]["status"] == "ok" and rows[new]["sha256"] == content[old]
        path = renv.dest / rows[new]["local_path"]
        assert path.name.startswith(f"{new[1]}-") and sha(path.read_bytes()) == content[old]
    runs = renv.rows("runs")
    assert runs[-1]["command"] == "restore" and runs[-1]["exit_code"] == 0
    journal = renv.rows("restores")
    assert [(r["state"], r["sha256"]) for r in journal] == [("done", content[ref]) for ref in sorted(gone)]

    # A second restore finds every image present and adds nothing.
    portal.reset_stats()
    again = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert again.exit_code == 0, again.stderr
    second = summary_of(again.stdout)
    assert (second["restored"], second["present"], second["bytes_sent"]) == (0, 3, 0)
    assert portal.stats.adds == 0


def test_gallery_pictures_are_added_in_their_original_order(renv: Env) -> None:
    catalog = make_catalog(products=1, images_per_product=8, min_size=300, max_size=2000, seed=12)
    data = {(i.product_id, i.image_id): i.content for i in catalog}
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        synced(renv, portal)
        gone = more_photos(portal)
        lose(renv, portal, *gone)
        result = invoke(restore_args(renv, portal, "--missing", "--json"))
        assert result.exit_code == 0, result.stderr
        pid = gone[0][0]
        restored = [h for _, kind, h in portal.gallery(pid) if kind == "MORE_PHOTO"]
        assert restored == [sha(data[ref]) for ref in sorted(gone)]


def test_dry_run_prints_the_plan_and_adds_nothing(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    gone = more_photos(portal)[:2]
    lose(renv, portal, *gone)
    before = renv.db.read_bytes()
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--missing", "--dry-run"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["restore", f"{p}:{i}"] for p, i in gone]
    assert portal.stats.adds == 0 and portal.stats.by_method.get("download", 0) == 0
    assert renv.db.read_bytes() == before
    as_json = invoke(restore_args(renv, portal, "--missing", "--dry-run", "--json"))
    summary = summary_of(as_json.stdout)
    assert summary["dry_run"] is True and summary["restored"] == 2 and summary["run_id"] is None
    assert [(p["product_id"], p["image_id"], p["action"]) for p in summary["plan"]] == [
        (p, i, "restore") for p, i in gone
    ]


def test_an_image_never_gone_is_present_and_not_added(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    pid, iid = more_photos(portal)[0]
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, f"{pid}:{iid}", "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["present"], summary["restored"]) == (1, 0)
    assert portal.stats.adds == 0


def test_an_image_the_portal_holds_under_another_id_is_present(renv: Env, gallery_portal: Portal) -> None:
    """Presence is by content: the same bytes re-uploaded by hand (a new id the database does not know) are
    downloaded, hashed, backed up, and count as present."""
    portal = gallery_portal
    content = synced(renv, portal)
    pid, iid = more_photos(portal)[0]
    data = next(i.content for i in portal.images() if (i.product_id, i.image_id) == (pid, iid))
    lose(renv, portal, (pid, iid))
    again = portal.add_image(product_id=pid, content=data, name="by-hand.png", type="MORE_PHOTO")
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["present"] == 1
    assert portal.stats.adds == 0
    assert (
        rows_by_ref(renv)[(pid, again.image_id)]["sha256"] == content[(pid, iid)]
    )  # backed up as sync would


# --- what is not sent ---------------------------------------------------------------------------------------------


def test_a_damaged_backup_is_never_sent(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    gone = more_photos(portal)[:2]
    lose(renv, portal, *gone)
    rows = rows_by_ref(renv)
    (renv.dest / rows[gone[0]]["local_path"]).write_bytes(
        b"x" * rows[gone[0]]["size"]
    )  # same size, other bytes
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["failed"]) == (1, 1)
    failure = summary["failures"][0]
    assert (failure["product_id"], failure["image_id"]) == gone[0]
    assert failure["reason"].startswith("no backup:") and "other bytes" in failure["reason"]
    assert portal.stats.adds == 1
    assert f"{gone[0][0]}:{gone[0][1]} failed: no backup" in result.stderr


def test_a_taken_detail_slot_is_left_alone_unless_replace(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    content = synced(renv, portal)
    detail = next((i.product_id, i.image_id) for i in portal.images() if i.type == "DETAIL_PICTURE")
    pid = detail[0]
    lose(renv, portal, detail)
    picture = make_catalog(products=1, images_per_product=1, min_size=300, max_size=900, seed=99)[0].content
    newcomer = portal.add_image(product_id=pid, name="new-detail.png", type="DETAIL_PICTURE", content=picture)
    assert invoke(renv.args(portal, "--product", str(pid))).exit_code == 0  # the newcomer is backed up
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, f"{detail[0]}:{detail[1]}", "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["skipped"], summary["restored"], summary["failed"]) == (1, 0, 0)
    assert portal.stats.adds == 0
    assert (newcomer.image_id, "DETAIL_PICTURE") in [(i, t) for i, t, _ in portal.gallery(pid)]

    replaced = invoke(restore_args(renv, portal, f"{detail[0]}:{detail[1]}", "--replace", "--json"))
    assert replaced.exit_code == 0, replaced.stderr
    assert summary_of(replaced.stdout)["restored"] == 1
    slot = [h for _, t, h in portal.gallery(pid) if t == "DETAIL_PICTURE"]
    assert slot == [content[detail]]
    # The picture it replaced was backed up before: its file and row are kept.
    row = rows_by_ref(renv)[(pid, newcomer.image_id)]
    assert row["sha256"] == sha(newcomer.content)
    assert sha((renv.dest / row["local_path"]).read_bytes()) == sha(newcomer.content)


def test_a_deleted_product_is_product_gone(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    pid = portal.images()[0].product_id
    portal.delete_product(pid)
    assert invoke(renv.args(portal, "--recorded")).exit_code == 0
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--product", str(pid), "--json"))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    assert summary["failed"] == 4 and summary["restored"] == 0
    assert all(f["reason"].startswith("product gone:") for f in summary["failures"])
    assert portal.stats.adds == 0


# --- exactly once ---------------------------------------------------------------------------------------------------


def test_a_dropped_answer_is_looked_for_not_added_again(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    content = synced(renv, portal)
    gone = more_photos(portal)[:2]
    lose(renv, portal, *gone)
    portal.faults.add_drop_answer = 1  # the first add is made, and its answer never comes
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["failed"]) == (2, 0)
    assert portal.stats.adds == 2
    for ref in gone:
        assert shas_on(portal, ref[0]).count(content[ref]) == 1
    assert {r["state"] for r in renv.rows("restores")} == {"done"}
    assert all(rows_by_ref(renv)[ref]["restored_as"] for ref in gone)
    # The product listed to plan, and once more to find the add whose answer was lost: the round after plans
    # from that look, without listing it a third time.
    assert {pid for pid, _ in gone} == {gone[0][0]}
    assert portal.stats.batch_commands["catalog.productImage.list"] == 2


def test_other_bytes_stored_fail_and_are_not_sent_again_unless_force(
    renv: Env, gallery_portal: Portal
) -> None:
    portal = gallery_portal
    content = synced(renv, portal)
    ref = more_photos(portal)[0]
    lose(renv, portal, ref)
    portal.faults.add_other_bytes = 1
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    assert summary["failed"] == 1 and summary["failures"][0]["reason"].startswith(
        "the portal stored other bytes"
    )
    rows = rows_by_ref(renv)
    assert rows[ref]["status"] == "missing" and rows[ref]["error"].startswith("the portal stored other bytes")
    stored = [(i, h) for i, _, h in portal.gallery(ref[0]) if h not in content.values()]
    assert len(stored) == 1
    assert rows[(ref[0], stored[0][0])]["sha256"] == stored[0][1]  # recorded as what the portal holds

    portal.reset_stats()
    again = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert again.exit_code == 1 and portal.stats.adds == 0
    assert "--force" in summary_of(again.stdout)["failures"][0]["reason"]

    forced = invoke(restore_args(renv, portal, "--missing", "--force", "--json"))
    assert forced.exit_code == 0, forced.stderr
    assert summary_of(forced.stdout)["restored"] == 1 and portal.stats.adds == 1
    assert shas_on(portal, ref[0]).count(content[ref]) == 1


def test_a_request_too_large_is_split(renv: Env) -> None:
    catalog = make_catalog(products=1, images_per_product=8, min_size=3000, max_size=4000, seed=13)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        content = synced(renv, portal)
        gone = more_photos(portal)
        lose(renv, portal, *gone)
        portal.max_request_bytes = 12000  # two adds' base64 fit, four do not
        (renv.root / "cfg.toml").write_text(FAST_CONFIG)  # the default request limit: many adds a request
        result = invoke(
            ["--config", str(renv.root / "cfg.toml"), *restore_args(renv, portal, "--missing", "--json")]
        )
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["restored"] == 4
        assert portal.stats.injected["413"] >= 1
        assert portal.stats.adds == 4
        pid = gone[0][0]
        assert [h for _, t, h in portal.gallery(pid) if t == "MORE_PHOTO"] == [
            content[r] for r in sorted(gone)
        ]


# --- selection and input errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["999:1"], "argument '999:1': image 999:1 is not recorded in"),
        (["--product", "999"], "--product 999: the database"),
        (["--product", "100", "--since", "1d"], "--since goes with --missing"),
        ([], "nothing to restore"),
        (["--missing", "--since", "yesterday"], "--since 'yesterday'"),
        (["12:abc"], "12:abc"),
    ],
)
def test_input_errors_exit_2_before_any_request(
    renv: Env, gallery_portal: Portal, args: list[str], message: str
) -> None:
    synced(renv, gallery_portal)
    gallery_portal.reset_stats()
    result = invoke(restore_args(renv, gallery_portal, *args))
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert gallery_portal.stats.requests == 0


def test_a_csv_line_not_recorded_is_named(renv: Env, gallery_portal: Portal) -> None:
    synced(renv, gallery_portal)
    pid, iid = more_photos(gallery_portal)[0]
    csv_file = renv.root / "pairs.csv"
    csv_file.write_text(f"productId,id\n{pid},{iid}\n{pid},424242\n")
    gallery_portal.reset_stats()
    result = invoke(restore_args(renv, gallery_portal, "--csv", str(csv_file)))
    assert result.exit_code == 2
    assert f"{csv_file}:3: image {pid}:424242 is not recorded" in result.stderr
    assert gallery_portal.stats.requests == 0


def test_since_selects_by_when_images_went_missing(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    old, new = more_photos(portal)[:2]
    lose(renv, portal, old)
    con = sqlite3.connect(renv.db)
    con.execute(
        "update images set missing_since = '2020-01-01T00:00:00Z' where product_id = ? and image_id = ?", old
    )
    con.commit()
    con.close()
    lose(renv, portal, new)
    assert rows_by_ref(renv)[old]["missing_since"] == "2020-01-01T00:00:00Z"  # kept while it stays missing
    result = invoke(restore_args(renv, portal, "--missing", "--since", "2d", "--dry-run", "--json"))
    assert result.exit_code == 0, result.stderr
    plan = summary_of(result.stdout)["plan"]
    assert [(p["product_id"], p["image_id"]) for p in plan] == [new]
    everything = invoke(
        restore_args(renv, portal, "--missing", "--since", "2019-12-31", "--dry-run", "--json")
    )
    assert len(summary_of(everything.stdout)["plan"]) == 2


def test_a_restore_during_a_sync_exits_75(renv: Env, gallery_portal: Portal) -> None:
    synced(renv, gallery_portal)
    gallery_portal.reset_stats()
    with run_lock(renv.db):
        result = invoke(restore_args(renv, gallery_portal, "--missing", "--json"))
    assert result.exit_code == 75
    assert "another imgsync sync is running" in result.stderr
    assert gallery_portal.stats.requests == 0


def test_a_cap_defers_the_rest_with_exit_5(renv: Env, gallery_portal: Portal) -> None:
    portal = gallery_portal
    synced(renv, portal)
    gone = more_photos(portal)
    lose(renv, portal, *gone)
    result = invoke(restore_args(renv, portal, "--missing", "--max-bytes", "1", "--json"))
    assert result.exit_code == 5, result.stderr
    summary = summary_of(result.stdout)
    assert summary["complete"] is False
    assert summary["restored"] >= 1 and summary["restored"] + summary["deferred"] == len(gone)
    assert portal.stats.adds == summary["restored"]
    rest = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert rest.exit_code == 0
    assert summary_of(rest.stdout)["restored"] == summary["deferred"]


# --- into a folder -------------------------------------------------------------------------------------------


def test_to_dir_writes_checked_files_and_calls_no_portal(
    renv: Env, gallery_portal: Portal, tmp_path: Path
) -> None:
    portal = gallery_portal
    content = synced(renv, portal)
    pid = portal.images()[0].product_id
    portal.stop()  # no portal at all
    out = tmp_path / "out"
    result = invoke(restore_args(renv, portal, "--product", str(pid), "--to", str(out), "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["requests"], summary["run_id"]) == (4, 0, None)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 4
    for path in files:
        iid = int(path.name.split("-")[0])
        assert path.parent.name == str(pid) and sha(path.read_bytes()) == content[(pid, iid)]
    stamp = {p: p.stat().st_mtime_ns for p in files}
    again = invoke(restore_args(renv, portal, "--product", str(pid), "--to", str(out), "--json"))
    assert summary_of(again.stdout)["present"] == 4
    assert {p: p.stat().st_mtime_ns for p in files} == stamp  # identical files left as they are
    files[0].write_bytes(b"damaged")
    fixed = invoke(restore_args(renv, portal, "--product", str(pid), "--to", str(out), "--json"))
    assert summary_of(fixed.stdout)["restored"] == 1
    assert sha(files[0].read_bytes()) == content[(pid, int(files[0].name.split("-")[0]))]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_to_dir_fails_an_image_without_a_good_backup(
    renv: Env, gallery_portal: Portal, tmp_path: Path
) -> None:
    portal = gallery_portal
    synced(renv, portal)
    row = renv.rows()[0]
    (renv.dest / row["local_path"]).unlink()
    result = invoke(
        restore_args(
            renv, portal, f"{row['product_id']}:{row['image_id']}", "--to", str(tmp_path / "o"), "--json"
        )
    )
    assert result.exit_code == 1
    assert summary_of(result.stdout)["failures"][0]["reason"].startswith("no backup:")
    assert not (tmp_path / "o" / str(row["product_id"])).exists()


def test_json_has_the_contracts_keys(renv: Env, gallery_portal: Portal) -> None:
    synced(renv, gallery_portal)
    result = invoke(restore_args(renv, gallery_portal, "--missing", "--json"))
    assert result.exit_code == 0
    assert list(json.loads(result.stdout)) == [
        "run_id",
        "exit_code",
        "complete",
        "selected",
        "restored",
        "present",
        "skipped",
        "failed",
        "deferred",
        "bytes_sent",
        "requests",
        "retries",
        "answers_503",
        "answers_429",
        "duration_s",
        "error",
        "failures",
        "restored_images",
    ]


# --- from S3 ------------------------------------------------------------------------------------------------------


@pytest.fixture
def s3_server(aws: None) -> Iterator[Any]:
    from imgsync.emulator.s3 import LocalS3Server

    server = LocalS3Server().start()
    yield server
    server.stop()


def test_a_restore_from_s3_with_keep_local_false(
    renv: Env, gallery_portal: Portal, s3_server: Any, isolated: Path
) -> None:
    """No local files at all: the backups are read from S3 (checked against their sha256), and the restored
    images' new objects land in S3 too."""
    portal, server = gallery_portal, s3_server
    server.create_bucket("restore-bucket")
    (isolated / "imgsync.toml").write_text(
        RESTORE_CONFIG + f'[storage]\nkeep_local = false\n[s3]\nenabled = true\nbucket = "restore-bucket"\n'
        f'endpoint_url = "{server.endpoint_url}"\n'
    )
    content = synced(renv, portal)
    assert not [p for p in renv.dest.rglob("*") if p.is_file()]  # nothing kept locally
    gone = more_photos(portal)[:2]
    lose(renv, portal, *gone)
    # One object damaged in place: it must not be sent.
    client = server.client()
    damaged_key = rows_by_ref(renv)[gone[1]]["s3_key"]
    client.put_object(Bucket="restore-bucket", Key=damaged_key, Body=b"not the picture")
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 1, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["failed"]) == (1, 1)
    assert "holds other bytes" in summary["failures"][0]["reason"]
    assert portal.stats.adds == 1
    new = summary["restored_images"][0]
    row = rows_by_ref(renv)[(new["target_product_id"], new["new_image_id"])]
    assert row["status"] == "ok" and row["local_path"] is None and row["s3_key"]
    body = client.get_object(Bucket="restore-bucket", Key=row["s3_key"])["Body"].read()
    assert sha(body) == content[gone[0]]
    assert not [p for p in renv.dest.rglob("*") if p.is_file()]


def test_two_backups_of_one_slot_restore_the_newest_and_leave_the_other(
    renv: Env, gallery_portal: Portal
) -> None:
    """A slot holds one picture: of two recorded DETAIL_PICTURE images the newest is restored into it, the other is
    reported as a taken slot (before: both were sent, the second replaced the first, which then failed)."""
    portal = gallery_portal
    content = synced(renv, portal)
    pid = portal.images()[0].product_id
    refs = [(p, i) for p, i in content if p == pid]
    lose(renv, portal, *refs)
    details = sorted(ref for ref in refs if rows_by_ref(renv)[ref]["type"] == "DETAIL_PICTURE")
    assert len(details) == 2
    portal.reset_stats()
    result = invoke(restore_args(renv, portal, "--product", str(pid), "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["skipped"], summary["failed"]) == (3, 1, 0)
    assert portal.stats.adds == 3
    slot = [h for _, t, h in portal.gallery(pid) if t == "DETAIL_PICTURE"]
    assert slot == [content[details[-1]]]


def test_adds_refused_by_the_time_limit_wait_and_go_again(
    renv: Env, gallery_portal: Portal, isolated: Path
) -> None:
    """A batch whose adds the portal refuses as not run (OPERATION_TIME_LIMIT) waits for the limit to lift and
    sends them again, in order (before: they went to the next round at once, met the same block, and failed)."""
    (isolated / "imgsync.toml").write_text(FAST_CONFIG)  # the default request limit: several adds a batch
    portal = gallery_portal
    content = synced(renv, portal)
    gone = more_photos(portal)
    lose(renv, portal, *gone)
    portal.operation_limit(1.5, method="catalog.productImage.add")
    result = invoke(restore_args(renv, portal, "--missing", "--json"))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["restored"], summary["failed"]) == (len(gone), 0)
    assert summary["retries"] >= 1
    assert portal.stats.adds == len(gone)
    for ref in gone:
        assert shas_on(portal, ref[0]).count(content[ref]) == 1


def test_a_defect_outside_the_pipeline_still_prints_the_json_summary(
    renv: Env, gallery_portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced(renv, gallery_portal)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a defect")

    monkeypatch.setattr("imgsync.cli.restore.run_to_end", broken)
    result = invoke(restore_args(renv, gallery_portal, "--missing", "--json"))
    assert result.exit_code == 70
    summary = summary_of(result.stdout)
    assert summary["exit_code"] == 70 and summary["error"].startswith("internal error: RuntimeError")
    assert summary["restored"] == 0 and summary["complete"] is False
