"""Plan packs (shared/plan.py): the shipped packs load, YUQING_PLAN fills the policy paths
the environment leaves unset, and a malformed pack stops the start naming file and entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from services.cli import main as cli_main
from services.grading.bootstrap import build as build_grading
from services.notification.bootstrap import build as build_notification
from services.statement.bootstrap import build as build_statement
from shared.directory import Directory
from shared.plan import PlanError, load_plan, read_manifest
from shared.service import Build, ServiceParts
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.harness import fake_service, fake_settings

PLANS = CONFIG_DIR / "plans"
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
SHIPPED = Settings().policy_paths


def pack(tmp_path: Path, name: str = "school") -> Path:
    """A copy of a shipped pack to break, whose plan.yaml points at config/'s rulebook and
    catalogue (the copy is outside config/plans/)."""
    target = tmp_path / name
    shutil.copytree(PLANS / name, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest.setdefault("files", {}).update(
        rulebook=str(CONFIG_DIR / "rulebook.yaml"), catalogue=str(CONFIG_DIR / "catalogue.yaml")
    )
    write(target / "plan.yaml", manifest)
    return target


def read(path: Path) -> dict:  # type: ignore[type-arg]
    data: dict = yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[type-arg]
    return data


def write(path: Path, data: object) -> None:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def refused(pack_dir: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(pack_dir, SHIPPED, DIRECTORY)
    return str(caught.value)


# --------------------------------------------------------------------------- shipped packs


def test_the_default_plan_is_huaning_and_carries_configs_own_files() -> None:
    settings = Settings()
    assert settings.plan == PLANS / "huaning"
    plan = load_plan(settings.plan, settings.policy_paths, DIRECTORY, pack_wins=False)
    assert (plan.id, plan.version) == ("huaning", "2026.11.1-seed003")
    assert plan.manifest.name == "华宁公路分局网络舆情应急处置预案"
    # No copies: the pack points at config/'s files, the one copy to edit.
    for name in ("rulebook", "obligations", "approval", "catalogue"):
        assert plan.paths[name] == (CONFIG_DIR / f"{name}.yaml").resolve()
        assert not (PLANS / "huaning" / f"{name}.yaml").exists()
    assert plan.manifest.ranks == (1, 2, 3)
    assert {a.entry for a in plan.manifest.articles} >= {
        "obligations.yaml#phone_quick_report",
        "approval.yaml#levels.1",
    }


def test_the_school_pack_brings_its_duties_and_chains_and_keeps_the_rest() -> None:
    plan = load_plan(PLANS / "school", SHIPPED, DIRECTORY)
    assert plan.paths["obligations"] == PLANS / "school" / "obligations.yaml"
    assert plan.paths["approval"] == PLANS / "school" / "approval.yaml"
    assert plan.paths["rulebook"] == SHIPPED["rulebook"]  # not in the pack: the deployment's
    kinds = {r.kind for rules in plan.obligations.categories.values() for r in rules}
    assert kinds == {"same_day_reply", "facts_told", "clarification", "suggestion_reply"}
    assert [s.role.value for s in plan.approval.levels[1]] == ["dept_head", "leader"]


def test_yuqing_plan_fills_only_the_paths_the_environment_leaves_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("YUQING_PLAN", str(PLANS / "school"))
    settings = Settings()
    assert settings.obligations_policy_path == PLANS / "school" / "obligations.yaml"
    assert settings.approval_policy_path == PLANS / "school" / "approval.yaml"
    assert settings.rulebook_path == CONFIG_DIR / "rulebook.yaml"
    own = tmp_path / "approval.yaml"
    shutil.copy(CONFIG_DIR / "approval.yaml", own)
    monkeypatch.setenv("YUQING_APPROVAL_POLICY_PATH", str(own))
    settings = Settings()
    assert settings.approval_policy_path == own  # set explicitly: the environment wins
    assert settings.obligations_policy_path == PLANS / "school" / "obligations.yaml"


# --------------------------------------------------------------------------- malformed packs


def test_a_duty_at_an_unknown_level_names_the_file_and_the_entry(tmp_path: Path) -> None:
    target = pack(tmp_path)
    duties = read(target / "obligations.yaml")
    duties["levels"][4] = duties["levels"].pop(3)
    write(target / "obligations.yaml", duties)
    message = refused(target)
    assert str(target / "obligations.yaml") in message
    assert "levels.4" in message


def test_a_duty_at_a_level_the_plan_does_not_list_is_refused(tmp_path: Path) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["levels"] = [1, 2]
    write(target / "plan.yaml", manifest)
    message = refused(target)
    assert f"{target / 'obligations.yaml'}: levels.3 (direct_handling)" in message
    assert f"{target / 'approval.yaml'}: levels.3" in message


def test_a_level_declared_without_names_or_a_chain_is_refused(tmp_path: Path) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["levels"] = [*manifest["levels"], {"rank": 4, "id": "minor"}]
    write(target / "plan.yaml", manifest)
    message = refused(target)
    catalogue = CONFIG_DIR / "catalogue.yaml"
    assert (
        f"{target / 'plan.yaml'}: levels.3 (minor): level 4 has no name in {catalogue} (levels)"
    ) in message
    assert f"{target / 'approval.yaml'}: levels.4: no clearance chain for level 4" in message


def fourtier(tmp_path: Path) -> Path:
    """A copy of the four-tier pack, which holds all four of its files."""
    target = tmp_path / "fourtier"
    shutil.copytree(PLANS / "fourtier", target)
    return target


def test_a_duty_or_chain_at_a_level_the_four_tier_pack_does_not_declare_is_refused(
    tmp_path: Path,
) -> None:
    target = fourtier(tmp_path)
    duties = read(target / "obligations.yaml")
    duties["levels"][5] = [
        {
            "kind": "fifth_tier",
            "title": "第五级",
            "owner_role": "office",
            "recipients": ["leader"],
            "within": "1h",
        }
    ]
    write(target / "obligations.yaml", duties)
    chains = read(target / "approval.yaml")
    chains["levels"][5] = [{"role": "office"}]
    write(target / "approval.yaml", chains)
    message = refused(target)
    assert (
        f"{target / 'obligations.yaml'}: levels.5 (fifth_tier): level 5 is not one of the "
        "plan's levels [1, 2, 3, 4]"
    ) in message
    assert f"{target / 'approval.yaml'}: levels.5: level 5 is not one of the plan's levels" in (
        message
    )


def test_a_duty_of_a_category_the_pack_does_not_declare_is_refused(tmp_path: Path) -> None:
    target = fourtier(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["categories"] = ["inquiry", "hype", "suggestion"]  # no rumor
    write(target / "plan.yaml", manifest)
    assert (
        f"{target / 'obligations.yaml'}: categories.rumor (false_report_contact): category "
        "'rumor' is not one of the plan's categories"
    ) in refused(target)


def test_levels_out_of_order_or_with_a_gap_are_refused_naming_the_entry(tmp_path: Path) -> None:
    target = fourtier(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["levels"] = [manifest["levels"][n] for n in (0, 1, 3)]  # 1, 2, 4
    write(target / "plan.yaml", manifest)
    message = refused(target)
    assert str(target / "plan.yaml") in message
    assert "levels.2 (minor): rank 4 where 3 was due" in message


def test_a_statement_kind_without_a_name_is_refused(tmp_path: Path) -> None:
    target = fourtier(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["statement_kinds"] = [*manifest["statement_kinds"], "memo"]
    write(target / "plan.yaml", manifest)
    assert (
        f"{target / 'plan.yaml'}: statement_kinds.4 (memo): no name in "
        f"{target / 'catalogue.yaml'} (statement_kinds)"
    ) in refused(target)


@pytest.mark.asyncio
async def test_a_rulebook_grading_at_a_level_the_pack_lacks_stops_grading(
    tmp_path: Path,
) -> None:
    target = fourtier(tmp_path)
    rules = read(target / "rulebook.yaml")
    rules["tiers"][0]["level"] = 5
    write(target / "rulebook.yaml", rules)
    settings = fake_settings(tmp_path, plan=target)
    with pytest.raises(PlanError, match=r"rulebook\.yaml: tier-central: level 5 is not one"):
        async with fake_service("grading", build_grading, settings=settings):
            pass


def test_a_chain_naming_a_role_nobody_holds_is_refused(tmp_path: Path) -> None:
    target = pack(tmp_path)
    chains = read(target / "approval.yaml")
    chains["levels"][2] = [{"role": "propaganda", "unit": "school-a"}]
    chains["levels"][3] = [{"role": "dept_head", "unit": "school-z"}]
    write(target / "approval.yaml", chains)
    message = refused(target)
    assert (
        f"{target / 'approval.yaml'}: levels.2[0] (propaganda): nobody in the directory holds "
        "the role 'propaganda' in unit 'school-a'"
    ) in message
    assert "levels.3[0] (dept_head): unit 'school-z' is not in the directory" in message


def test_a_duty_owned_by_a_role_nobody_holds_is_refused(tmp_path: Path) -> None:
    target = pack(tmp_path)
    directory = DIRECTORY.model_copy(
        update={"people": [p for p in DIRECTORY.people if "spokesperson" not in p.roles]}
    )
    with pytest.raises(PlanError) as caught:
        load_plan(target, SHIPPED, directory)
    assert (
        f"{target / 'obligations.yaml'}: categories.inquiry (same_day_reply).owner_role: "
        "nobody in the directory holds the role 'spokesperson'"
    ) in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["files"]["rulebook"] = "no-such-rulebook.yaml"
    write(target / "plan.yaml", manifest)
    assert f"{target / 'plan.yaml'}: files.rulebook: no-such-rulebook.yaml is missing" in (
        refused(target)
    )
    (target / "plan.yaml").unlink()
    assert f"plan pack {target}: plan.yaml is missing" in refused(target)


def test_an_article_mapped_to_an_entry_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["articles"].append(
        {"article": "五（一）善后处置", "entry": "obligations.yaml#aftercare"}
    )
    write(target / "plan.yaml", manifest)
    n = len(manifest["articles"]) - 1
    assert (
        f"{target / 'plan.yaml'}: articles[{n}] (五（一）善后处置): obligations.yaml has no entry "
        "'aftercare'"
    ) in refused(target)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("service", "build"), [("statement", build_statement), ("grading", build_grading)]
)
async def test_a_chain_nobody_can_fill_stops_the_start(
    tmp_path: Path, service: str, build: Build[ServiceParts]
) -> None:
    target = pack(tmp_path)
    chains = read(target / "approval.yaml")
    chains["levels"][1] = [{"role": "propaganda", "unit": "road-1"}]
    write(target / "approval.yaml", chains)
    settings = fake_settings(tmp_path, plan=target)
    with pytest.raises(PlanError, match=r"approval\.yaml: levels\.1\[0\] \(propaganda\)"):
        async with fake_service(service, build, settings=settings):
            pass


@pytest.mark.asyncio
async def test_a_duty_at_a_level_the_plan_leaves_out_stops_notification(tmp_path: Path) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["levels"] = [1, 2]
    write(target / "plan.yaml", manifest)
    settings = fake_settings(tmp_path, plan=target)
    with pytest.raises(PlanError, match=r"obligations\.yaml: levels\.3 \(direct_handling\)"):
        async with fake_service("notification", build_notification, settings=settings):
            pass


def test_a_file_set_in_place_of_the_packs_is_not_held_to_its_article_map(
    tmp_path: Path,
) -> None:
    own = tmp_path / "obligations.yaml"
    duties = read(CONFIG_DIR / "obligations.yaml")
    duties["levels"][1] = duties["levels"][1][:1]  # no written quick report any more
    write(own, duties)
    settings = Settings(obligations_policy_path=own)
    plan = load_plan(settings.plan, settings.policy_paths, DIRECTORY, pack_wins=False)
    assert plan.paths["obligations"] == own
    # As the pack's candidate, the same pack still holds its own file to the map.
    assert (
        load_plan(PLANS / "huaning", settings.policy_paths, DIRECTORY).paths["obligations"]
        == (CONFIG_DIR / "obligations.yaml").resolve()
    )


@pytest.mark.asyncio
async def test_a_rulebook_grading_a_category_the_plan_leaves_out_stops_grading(
    tmp_path: Path,
) -> None:
    target = pack(tmp_path)
    manifest = read(target / "plan.yaml")
    manifest["categories"] = ["inquiry", "hype", "rumor"]
    duties = read(target / "obligations.yaml")
    del duties["categories"]["suggestion"]
    manifest["articles"] = [a for a in manifest["articles"] if "suggestion" not in a["entry"]]
    write(target / "plan.yaml", manifest)
    write(target / "obligations.yaml", duties)
    assert read_manifest(target).id == "school"
    settings = fake_settings(tmp_path, plan=target)
    with pytest.raises(PlanError, match=r"category-suggestion: category 'suggestion'"):
        async with fake_service("grading", build_grading, settings=settings):
            pass


def test_the_cli_tries_only_packs_of_the_plans_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "school"
    elsewhere.mkdir()
    assert cli_main(["plan", "try", str(elsewhere), "--since", "2026-11-01"]) == 2
    assert "is not a pack of" in capsys.readouterr().err
    assert cli_main(["plan", "try", "school", "--since", "yesterday"]) == 2
    assert "--since 'yesterday' is not a date" in capsys.readouterr().err
    assert (PLANS / "school" / "plan.yaml").is_file()
