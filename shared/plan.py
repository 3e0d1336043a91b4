"""A plan (应急预案) as configuration: a pack directory with plan.yaml and any of the policy
files (rulebook.yaml, obligations.yaml, approval.yaml, catalogue.yaml).

`YUQING_PLAN` names the pack; every policy path not set explicitly defaults to the pack's
file when the pack has one (`pack_paths`, applied by shared/settings.py). plan.yaml may
point at a file outside the pack (`files:`, relative to the pack), which is how the
shipped Huaning pack carries config/'s files without copying them; a file neither held nor
pointed at is the deployment's default.

`load_plan` reads the pack and checks it against the directory before anything starts:
every level, category and statement kind the plan declares named in its catalogue, every
level with a clearance chain, every duty's level and category one of the plan's, every role
a duty or a clearance chain names held by someone in the directory (in the named unit where
the chain names one), and every article the plan says it carries mapped to an entry that
exists. A failure is a `PlanError` whose message names the file and the entry.

The levels, categories and statement kinds are the plan's own (`levels:`, `categories:`,
`statement_kinds:` in plan.yaml): the code holds none of them. A level is an entry
`{rank, id}`: events carry the rank (1 the most severe, then 2, 3 ... with no gap), the id
is what the plan calls it; the names staff read are the catalogue's (`levels`,
`level_short`), the pack's own catalogue.yaml where it has one.

A plan may keep a resolved incident under watch (`watch: {period: 7d, on_report: reopen |
attach}`, 善后、动态跟踪): intake records the watch with the resolution and routes matching
reports by it; without `watch:`, intake's own reopen window applies.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.events import (
    DEFAULT_STATEMENT_KINDS,
    PLAN_ID,
    Category,
    Level,
    PlanId,
    StatementKind,
    WatchOnReport,
)
from shared.identity import Role
from shared.models import FrozenModel
from shared.plan_rules import INCIDENT_UNIT, ApprovalPolicy, ObligationPolicy
from shared.policy import Duration, PolicyError, load_policy

MANIFEST = "plan.yaml"
PolicyName = Literal["rulebook", "obligations", "approval", "catalogue"]
# Each policy a pack may carry: its file name in the pack.
POLICY_FILES: dict[PolicyName, str] = {
    "rulebook": "rulebook.yaml",
    "obligations": "obligations.yaml",
    "approval": "approval.yaml",
    "catalogue": "catalogue.yaml",
}
PACK_NAME = r"^[a-z][a-z0-9_-]{0,63}$"


class PlanDuties(ObligationPolicy):
    """The duties of obligations.yaml; its `delivery` part is the notification service's."""

    delivery: dict[str, Any] | None = None


class PlanError(PolicyError):
    """A plan pack that cannot be used as written; the message names the file and entry."""


class Article(FrozenModel):
    """One article of the seed plan and the entry that carries it: `file#anchor`, where the
    anchor is a rule id or duty kind of that file, or a dotted path into it (`levels.1`)."""

    article: str = Field(min_length=1, max_length=200)
    entry: str = Field(min_length=3, max_length=200, pattern=r"^[a-z]+\.yaml#\S+$")


class PlanLevel(FrozenModel):
    """One level of the plan: the rank events carry (1 the most severe) and the plan's id."""

    rank: Level
    id: str = Field(pattern=PLAN_ID)

    @model_validator(mode="before")
    @classmethod
    def _bare_rank(cls, data: Any) -> Any:
        # `levels: [1, 2, 3]` (the form before levels were the plan's): ids level_1 ...
        if isinstance(data, int) and not isinstance(data, bool):
            return {"rank": data, "id": f"level_{data}"}
        return data


class PlanGrading(FrozenModel):
    """Who decides the level (seed 003 第四条: 舆情级别由……确定): with `confirmed_by`, the
    rulebook's grade is a proposal (IncidentGradeProposed) until a person with that role
    confirms or changes it; without, the rulebook grades (IncidentGraded) as it always did."""

    confirmed_by: Role | None = None

    @model_validator(mode="after")
    def _not_partner(self) -> PlanGrading:
        if self.confirmed_by is Role.PARTNER:
            raise ValueError("confirmed_by: a partner cannot decide the bureau's grade")
        return self


class PlanWatch(FrozenModel):
    """善后、动态跟踪: after resolution the incident stays under watch for `period`; a
    matching report in that time reopens it (`on_report: reopen`) or is attached to it,
    the incident staying resolved, for the office to see (`attach`). After the watch a
    matching report opens a new incident. Without `watch:`, intake's global reopen window
    (config/intake.yaml `reopen_window_hours`) applies as before."""

    period: Duration
    on_report: WatchOnReport


class PlanManifest(FrozenModel):
    id: str = Field(pattern=PACK_NAME)
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    seed: str = Field(min_length=1, max_length=200, description="the seed plan it carries")
    levels: tuple[PlanLevel, ...] = Field(min_length=1)
    categories: tuple[Category, ...] = Field(min_length=1)
    statement_kinds: tuple[StatementKind, ...] = Field(
        default=tuple(StatementKind(k) for k in DEFAULT_STATEMENT_KINDS), min_length=1
    )
    articles: tuple[Article, ...] = ()
    files: dict[PolicyName, str] = Field(default_factory=dict)
    grading: PlanGrading = Field(default_factory=PlanGrading)
    watch: PlanWatch | None = None

    @model_validator(mode="after")
    def _no_repeats(self) -> PlanManifest:
        for field, values in (
            ("levels", self.ranks),
            ("levels", tuple(level.id for level in self.levels)),
            ("categories", self.categories),
            ("statement_kinds", self.statement_kinds),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"{field}: an entry is listed twice")
        for n, level in enumerate(self.levels):
            if level.rank != n + 1:
                raise ValueError(
                    f"levels.{n} ({level.id}): rank {level.rank} where {n + 1} was due: "
                    "levels are listed from the most severe, ranked 1, 2, 3 ... with no gap"
                )
        return self

    @property
    def ranks(self) -> tuple[int, ...]:
        """The levels' ranks, the most severe first: what events carry."""
        return tuple(level.rank for level in self.levels)

    def level_id(self, rank: int) -> str | None:
        return next((level.id for level in self.levels if level.rank == rank), None)


def read_manifest(pack_dir: Path) -> PlanManifest:
    path = pack_dir / MANIFEST
    if not path.is_file():
        raise PlanError(f"plan pack {pack_dir}: {MANIFEST} is missing")
    try:
        return load_policy(path, PlanManifest)
    except PolicyError as exc:
        raise PlanError(str(exc)) from None


def pack_paths(pack_dir: Path, manifest: PlanManifest | None = None) -> dict[PolicyName, Path]:
    """The policy files the pack provides: those plan.yaml points at (which must exist),
    then those the pack holds. A policy absent here keeps the deployment's default."""
    manifest = manifest or read_manifest(pack_dir)
    found: dict[PolicyName, Path] = {}
    for name, file_name in POLICY_FILES.items():
        pointed = manifest.files.get(name)
        if pointed is not None:
            path = (pack_dir / pointed).resolve()
            if not path.is_file():
                raise PlanError(f"{pack_dir / MANIFEST}: files.{name}: {pointed} is missing")
            found[name] = path
        elif (pack_dir / file_name).is_file():
            found[name] = pack_dir / file_name
    return found


@dataclass(frozen=True)
class Plan:
    """The plan in force (or a candidate): its manifest and the policies it resolves to."""

    manifest: PlanManifest
    pack_dir: Path
    paths: Mapping[PolicyName, Path]
    obligations: ObligationPolicy
    approval: ApprovalPolicy
    catalogue: Catalogue

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version


Check = Literal["duties", "chains", "articles"]
ALL_CHECKS: frozenset[Check] = frozenset({"duties", "chains", "articles"})


def load_plan(
    pack_dir: Path,
    defaults: Mapping[PolicyName, Path],
    directory: Directory,
    *,
    pack_wins: bool = True,
    checks: Collection[Check] = ALL_CHECKS,
) -> Plan:
    """Read and check a pack. `defaults` are the files for the policies the pack does not
    provide; with `pack_wins=False` they are the files in force (the settings, where the
    pack already filled what the environment left unset). A service checks what it runs
    on (`checks`): notification the duties, statement the chains, grading everything, as
    it serves the plan. Raises PlanError naming the file and the entry."""
    manifest = read_manifest(pack_dir)
    provided = pack_paths(pack_dir, manifest)
    paths = {**defaults, **provided} if pack_wins else {**provided, **defaults}
    missing = [n for n in POLICY_FILES if n not in paths or not paths[n].is_file()]
    if missing:
        names = ", ".join(f"{n} ({paths.get(n, POLICY_FILES[n])})" for n in missing)
        raise PlanError(f"plan pack {pack_dir}: missing policy file: {names}")
    try:
        obligations = load_policy(paths["obligations"], PlanDuties)
        approval = load_policy(paths["approval"], ApprovalPolicy)
        catalogue = Catalogue.load(paths["catalogue"])
    except PolicyError as exc:
        raise PlanError(str(exc)) from None
    plan = Plan(manifest, pack_dir, paths, obligations, approval, catalogue)
    # A file the deployment set explicitly in place of the pack's carries none of the
    # pack's articles: the article map holds for the other files in force.
    own = {name for name in paths if name not in provided or paths[name] == provided[name]}
    problems = [
        *check_names(plan),
        *check_grading(plan, directory),
        *(check_duties(plan, directory) if "duties" in checks else []),
        *(check_chains(plan, directory) if "chains" in checks else []),
        *(check_articles(plan, own) if "articles" in checks else []),
    ]
    if problems:
        raise PlanError("; ".join(problems))
    return plan


# --------------------------------------------------------------------------- checks


def _holders(directory: Directory, role: str, unit: str | None = None) -> list[str]:
    return [
        p.id
        for p in directory.people
        if role in {r.value for r in p.roles} and (unit is None or p.unit == unit)
    ]


def check_names(plan: Plan) -> list[str]:
    """Every level, category and statement kind the plan declares has the names staff read
    in the plan's catalogue."""
    manifest_file, file = plan.pack_dir / MANIFEST, plan.paths["catalogue"]
    names = plan.catalogue
    problems: list[str] = []
    for n, level in enumerate(plan.manifest.levels):
        for field, named in (("levels", names.levels), ("level_short", names.level_short)):
            if level.rank not in named:
                problems.append(
                    f"{manifest_file}: levels.{n} ({level.id}): level {level.rank} has no name "
                    f"in {file} ({field})"
                )
    kinds: tuple[tuple[str, tuple[PlanId, ...], dict[PlanId, str]], ...] = (
        ("categories", plan.manifest.categories, names.categories),
        ("statement_kinds", plan.manifest.statement_kinds, names.statement_kinds),
    )
    for field, ids, id_names in kinds:
        for n, value in enumerate(ids):
            if value not in id_names:
                problems.append(
                    f"{manifest_file}: {field}.{n} ({value}): no name in {file} ({field})"
                )
    return problems


def check_grading(plan: Plan, directory: Directory) -> list[str]:
    """The role that confirms a proposed grade is held by someone in the directory."""
    role = plan.manifest.grading.confirmed_by
    if role is None or _holders(directory, role.value):
        return []
    return [
        f"{plan.pack_dir / MANIFEST}: grading.confirmed_by: nobody in the directory holds "
        f"the role {role.value!r}"
    ]


def check_duties(plan: Plan, directory: Directory) -> list[str]:
    """Every duty at a level and of a category the plan has; its roles held by someone."""
    file = plan.paths["obligations"]
    problems: list[str] = []
    levels, categories = set(plan.manifest.ranks), set(plan.manifest.categories)
    for level, rules in plan.obligations.levels.items():
        if level not in levels:
            kinds = ", ".join(r.kind for r in rules) or "no duty"
            problems.append(
                f"{file}: levels.{int(level)} ({kinds}): level {int(level)} is not one of the "
                f"plan's levels {sorted(int(v) for v in levels)}"
            )
    for category, rules in plan.obligations.categories.items():
        if category not in categories:
            kinds = ", ".join(r.kind for r in rules) or "no duty"
            problems.append(
                f"{file}: categories.{category} ({kinds}): category {str(category)!r} is "
                "not one of the plan's categories"
            )
    where = [
        *((f"levels.{int(lv)}", rules) for lv, rules in plan.obligations.levels.items()),
        *((f"categories.{c}", rules) for c, rules in plan.obligations.categories.items()),
    ]
    for place, rules in where:
        for rule in rules:
            roles = {
                "owner_role": (rule.owner_role,),
                "recipients": rule.recipients,
                "alert_roles": rule.alert_roles or (),
            }
            for field, named in roles.items():
                for role in named:
                    if not _holders(directory, role.value):
                        problems.append(
                            f"{file}: {place} ({rule.kind}).{field}: nobody in the directory "
                            f"holds the role {role.value!r}"
                        )
    for role in plan.obligations.alert_roles:
        if not _holders(directory, role.value):
            problems.append(
                f"{file}: alert_roles: nobody in the directory holds the role {role.value!r}"
            )
    return problems


def check_chains(plan: Plan, directory: Directory) -> list[str]:
    """Every clearance chain at a level the plan has; each step's role held by someone (in
    the named unit, when the step names one)."""
    file = plan.paths["approval"]
    problems: list[str] = []
    units = {u.id for u in directory.units}
    for n, declared in enumerate(plan.manifest.levels):
        if declared.rank not in plan.approval.levels:
            problems.append(
                f"{file}: levels.{declared.rank}: no clearance chain for level {declared.rank} "
                f"({declared.id}, {plan.pack_dir / MANIFEST} levels.{n})"
            )
    for level, steps in plan.approval.levels.items():
        if level not in plan.manifest.ranks:
            problems.append(
                f"{file}: levels.{int(level)}: level {int(level)} is not one of the plan's levels"
            )
        for n, step in enumerate(steps):
            entry = f"{file}: levels.{int(level)}[{n}] ({step.role.value})"
            if step.unit is not None and step.unit != INCIDENT_UNIT and step.unit not in units:
                problems.append(f"{entry}: unit {step.unit!r} is not in the directory")
                continue
            unit = None if step.unit in (None, INCIDENT_UNIT) else step.unit
            if not _holders(directory, step.role.value, unit):
                held = f" in unit {unit!r}" if unit else ""
                problems.append(
                    f"{entry}: nobody in the directory holds the role {step.role.value!r}{held}"
                )
    return problems


def _anchors(data: Any, prefix: str = "") -> Iterable[str]:
    """What an article's entry may name in a file: every id and kind, every dotted path."""
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            if key in ("id", "kind") and isinstance(value, str):
                yield value
            yield from _anchors(value, path)
    elif isinstance(data, list):
        for n, value in enumerate(data):
            yield from _anchors(value, f"{prefix}[{n}]")


def check_articles(plan: Plan, own: Iterable[PolicyName] | None = None) -> list[str]:
    """Each article plan.yaml says it carries maps to an entry that exists, in the pack's
    own files (`own`: those of its files in force; all of them when not given)."""
    manifest_file = plan.pack_dir / MANIFEST
    kept = set(plan.paths) if own is None else set(own)
    files: dict[str, Path] = {POLICY_FILES[n]: p for n, p in plan.paths.items() if n in kept}
    replaced = {POLICY_FILES[n] for n in plan.paths if n not in kept}
    files[MANIFEST] = manifest_file
    anchors: dict[str, set[str]] = {}
    problems: list[str] = []
    for n, article in enumerate(plan.manifest.articles):
        file_name, anchor = article.entry.split("#", 1)
        if file_name in replaced:
            continue
        if file_name not in files:
            problems.append(
                f"{manifest_file}: articles[{n}] ({article.article}): {file_name} is not a file "
                f"of the plan ({', '.join(sorted(files))})"
            )
            continue
        if file_name not in anchors:
            with files[file_name].open(encoding="utf-8") as fh:
                anchors[file_name] = set(_anchors(yaml.safe_load(fh)))
        if anchor not in anchors[file_name]:
            problems.append(
                f"{manifest_file}: articles[{n}] ({article.article}): {file_name} has no entry "
                f"{anchor!r}"
            )
    return problems
