"""A plan pack that uses every duty rule a plan may write, for the plan view and the what-if
tests: the town pack (config/plans/town, seed 003 篇一) copied, with

- grading confirmed by the leading group (plan.yaml `grading: {confirmed_by: leader}`);
- a watch after resolution (`watch: {period: 3d, on_report: attach}`);
- the group report of a major opinion counted from its publication (`counted_from:
  published`), a proposal notice at level 2 (`opens_on: proposed`), a follow-up of a signed
  instruction at level 2 (`opens_on: instructed`);
- the inquiry's online reply met by publishing an online reply (`met_by`);
- a route: a town leader's board item goes to the county office (`routing`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from shared.settings import CONFIG_DIR

NAME = "rules"


def _rule(level: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(rule for rule in level if rule["kind"] == kind)


def write_rules_pack(plans_dir: Path, name: str = NAME) -> Path:
    """The pack under `plans_dir/name`, returned."""
    pack = plans_dir / name
    shutil.copytree(CONFIG_DIR / "plans" / "town", pack)
    manifest_file, duties_file = pack / "plan.yaml", pack / "obligations.yaml"
    manifest = yaml.safe_load(manifest_file.read_text(encoding="utf-8"))
    manifest.update(
        id=name,
        version="2026.12.9-rules",
        grading={"confirmed_by": "leader"},
        watch={"period": "3d", "on_report": "attach"},
    )
    manifest_file.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")

    duties = yaml.safe_load(duties_file.read_text(encoding="utf-8"))
    levels = duties["levels"]
    _rule(levels[1], "group_report_major")["counted_from"] = "published"
    levels[2] += [
        {
            "kind": "proposal_notice",
            "title": "较大舆情：定级建议提出后报领导小组确认",
            "owner_role": "office",
            "recipients": ["leader"],
            "within": "1h",
            "opens_on": "proposed",
        },
        {
            "kind": "instruction_followup",
            "title": "较大舆情：按领导签批意见办理并回告",
            "owner_role": "office",
            "recipients": ["leader"],
            "within": "4h",
            "opens_on": "instructed",
        },
    ]
    _rule(duties["categories"]["inquiry"], "online_reply")["met_by"] = {
        "statement_published": "online_reply"
    }
    duties["routing"] = [
        {
            "id": "town-leader-board",
            "title": "镇领导留言板留言转县局办公室",
            "source_type": "leader_board",
            "source_name": "镇(长|党委)",
            "recipients": [{"role": "office", "unit": "county"}],
            "kinds": ["group_report", "group_report_major"],
        }
    ]
    duties_file.write_text(yaml.safe_dump(duties, allow_unicode=True), encoding="utf-8")
    return pack
