"""Bad input stops the run before any request, naming the place; good CSVs of every kind work."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsync.emulator import Portal

from .conftest import Env, all_pairs, invoke, summary_of

BAD_CSVS = [
    ("productId,id\n12,345\nabc,7\n", "pairs.csv:3: product id 'abc' is not a positive integer"),
    ("12,345\n12,-1\n", "pairs.csv:2: image id '-1' is not a positive integer"),
    ("12;345\n=1+2;5\n", "pairs.csv:2: product id '=1+2' is not a positive integer"),
    ("product_id,image_id\n12\n", "pairs.csv:2: expected product id and image id, got 1 column"),
    ("\n\n", "pairs.csv: no product/image pairs found"),
    ("productId,id\n", "pairs.csv: no product/image pairs found"),
    ("12,99999999999999999999\n", "pairs.csv:1: image id '99999999999999999999' is not a positive integer"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CSVS)
def test_bad_csv_exits_2_naming_file_and_line_with_zero_requests(
    env: Env, portal: Portal, isolated: Path, text: str, message: str
) -> None:
    (isolated / "pairs.csv").write_text(text)
    result = invoke(env.args(portal, "--csv", "pairs.csv", *all_pairs(portal)[:2]))
    assert result.exit_code == 2
    assert message in result.stderr
    assert portal.stats.requests == 0
    assert not env.db.exists()


def test_binary_junk_names_the_line(env: Env, portal: Portal, isolated: Path) -> None:
    (isolated / "pairs.csv").write_bytes(b"12,345\n\xff\xfe\x00junk,\x80\n")
    result = invoke(env.args(portal, "--csv", "pairs.csv"))
    assert result.exit_code == 2
    assert "pairs.csv:2:" in result.stderr
    assert portal.stats.requests == 0


def test_bad_pair_argument_exits_2(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal, "12:345", "12-346"))
    assert result.exit_code == 2
    assert "argument 2: '12-346'" in result.stderr
    assert portal.stats.requests == 0


def test_missing_csv_file_exits_2(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal, "--csv", "nope.csv"))
    assert result.exit_code == 2
    assert "nope.csv" in result.stderr


def test_no_input_at_all_is_a_usage_error(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal))
    assert result.exit_code == 2
    assert "nothing to sync" in result.stderr


def test_unknown_config_key_exits_2_naming_it(env: Env, portal: Portal, isolated: Path) -> None:
    (isolated / "imgsync.toml").write_text('[storage]\ndst = "x"\n')
    result = invoke(env.args(portal, *all_pairs(portal)[:1]))
    assert result.exit_code == 2
    assert "unknown key 'storage.dst'" in result.stderr
    assert portal.stats.requests == 0


def test_csv_variants_and_stdin_are_merged_and_deduplicated(env: Env, portal: Portal, isolated: Path) -> None:
    images = portal.images()
    rows = [(i.product_id, i.image_id) for i in images[:6]]
    (isolated / "header.csv").write_text(
        "\ufeffName,ID,PRODUCTID\n" + "".join(f"x,{iid},{pid}\n" for pid, iid in rows[:3])
    )
    (isolated / "semi.csv").write_text("".join(f"{pid};{iid}\n\n" for pid, iid in rows[2:5]))
    stdin = "product_id,image_id\n" + "".join(f"{pid},{iid}\n" for pid, iid in rows[4:6])
    result = invoke(
        env.args(
            portal,
            "--json",
            "--csv",
            "header.csv",
            "--csv",
            "semi.csv",
            "--csv",
            "-",
            f"{rows[0][0]}:{rows[0][1]}",
        ),
        input=stdin,
    )
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["requested"] == 6 and summary["downloaded"] == 6
    assert portal.stats.downloads_served == 6
    assert sorted((r["product_id"], r["image_id"]) for r in env.rows()) == sorted(rows)
