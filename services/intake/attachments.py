"""Files attached to a report (附件: screenshots, videos, scanned replies, media coverage).

A file is checked before anything is stored: at most `YUQING_ATTACHMENT_MAX_BYTES` (413),
not empty (422), of a type in `YUQING_ATTACHMENT_TYPES` as its bytes tell it (magic
numbers, the `filetype` library; 415), whatever name or type the upload claims. It is
then stored under a new id with its sha256 (`AttachmentStore`: intake's own GridFS in
service, a dictionary in unit tests), and `AttachmentAdded` is appended to the incident's
stream. When the append fails the stored file is deleted again: nothing is half-stored.

Who may attach: whoever may act on the report's incident (`Visibility.may_act_on`) with a
filing role, or the partner that filed the report. Who may list and download: whoever
sees the report's incident (a partner: only the files it added itself, to reports it
filed: the bureau's own files are the bureau's); any other id answers the one 404 of an
unknown one.
"""

from __future__ import annotations

import contextlib
import hashlib
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import filetype  # type: ignore[import-untyped]
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from services.intake.domain import Incident
from services.intake.projections import IntakeViews, ReportOut
from shared.clock import Clock
from shared.errors import Forbidden, Invalid, NotFound, TooLarge, UnsupportedType
from shared.events import AttachmentAdded, Envelope
from shared.identity import Caller, Role
from shared.models import FrozenModel
from shared.repository import Cause, CommandRunner, Repository
from shared.settings import Settings
from shared.store import Document, UnitOfWork
from shared.visibility import IncidentScope, Sight, Visibility, hidden, scope_of

ATTACHMENTS = "attachments"  # the read model: one document per attached file
BUCKET = "attachment_files"  # the GridFS bucket holding the bytes
FIELD = "file"  # the multipart field the file comes in

# The types a deployment may allow (YUQING_ATTACHMENT_TYPES), as their bytes tell them.
KNOWN_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "pdf": "application/pdf",
    "mp4": "video/mp4",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

ATTACHERS = (
    Role.MONITOR,
    Role.OFFICE,
    Role.LEADER,
    Role.DEPT_HEAD,
    Role.SPOKESPERSON,
    Role.PARTNER,
)


@dataclass(frozen=True)
class AttachmentPolicy:
    max_bytes: int
    types: dict[str, str]  # content type -> its name in YUQING_ATTACHMENT_TYPES

    @classmethod
    def from_settings(cls, settings: Settings) -> AttachmentPolicy:
        names = [n.strip().lower() for n in settings.attachment_types.split(",") if n.strip()]
        unknown = [n for n in names if n not in KNOWN_TYPES]
        if unknown or not names:
            raise ValueError(
                f"YUQING_ATTACHMENT_TYPES: unknown types {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(KNOWN_TYPES)}"
            )
        return cls(settings.attachment_max_bytes, {KNOWN_TYPES[n]: n for n in names})


def content_type_of(data: bytes) -> str | None:
    """The type the file's bytes tell (magic numbers), None when they tell none."""
    kind = filetype.guess(data)
    return None if kind is None else str(kind.mime)


def clean_filename(name: str | None) -> str:
    """The file's own name as uploaded, without any directory part or control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if not base or base in (".", ".."):
        raise Invalid(FIELD, "the file has no name", "missing_filename")
    if len(base) > 255:
        raise Invalid(FIELD, "the file name is longer than 255 characters", "too_long")
    return base


def checked(data: bytes, policy: AttachmentPolicy) -> str:
    """The content type of an acceptable file; 413, 422 or 415 naming `file` otherwise."""
    if len(data) > policy.max_bytes:
        raise TooLarge(
            f"the file is larger than {policy.max_bytes} bytes (YUQING_ATTACHMENT_MAX_BYTES)",
            [{"field": FIELD, "reason": f"at most {policy.max_bytes} bytes", "type": "too_large"}],
        )
    if not data:
        raise Invalid(FIELD, "the file is empty", "empty")
    mime = content_type_of(data)
    if mime not in policy.types:
        allowed = ", ".join(sorted(policy.types.values()))
        told = f"its content is {mime}" if mime else "its content is of no known type"
        raise UnsupportedType(
            f"the file's type is not allowed: {told}; allowed: {allowed}",
            [{"field": FIELD, "reason": f"{told}; allowed: {allowed}", "type": "unsupported"}],
        )
    return mime


def new_attachment_id() -> str:
    return f"att-{uuid.uuid4().hex[:16]}"


def content_disposition(filename: str) -> str:
    """`attachment` with the name in ASCII and as UTF-8 (RFC 6266), for Chinese names."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


# --------------------------------------------------------------------------- storage


class AttachmentStore(Protocol):
    """Where the bytes are kept, under the attachment's id."""

    async def put(
        self, attachment_id: str, filename: str, data: bytes, metadata: dict[str, Any]
    ) -> None: ...

    async def chunks(self, attachment_id: str) -> AsyncIterator[bytes] | None:
        """The file's bytes in chunks; None when there is no such file."""
        ...

    async def delete(self, attachment_id: str) -> None: ...


class GridFSAttachmentStore:
    """Intake's own database's GridFS (bucket `attachment_files`)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self._bucket: AsyncGridFSBucket | None = None

    @property
    def bucket(self) -> AsyncGridFSBucket:
        # Made on first use: building the service asks nothing of the database.
        if self._bucket is None:
            self._bucket = AsyncGridFSBucket(self.db, bucket_name=BUCKET)
        return self._bucket

    async def put(
        self, attachment_id: str, filename: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        await self.bucket.upload_from_stream_with_id(
            attachment_id, filename, data, metadata=metadata
        )

    async def chunks(self, attachment_id: str) -> AsyncIterator[bytes] | None:
        try:
            grid_out = await self.bucket.open_download_stream(attachment_id)
        except NoFile:
            return None

        async def read() -> AsyncIterator[bytes]:
            while chunk := await grid_out.readchunk():
                yield chunk

        return read()

    async def delete(self, attachment_id: str) -> None:
        with contextlib.suppress(NoFile):
            await self.bucket.delete(attachment_id)


class MemoryAttachmentStore:
    """The same in a dictionary, for unit tests on the fake database."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def put(
        self, attachment_id: str, filename: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        self.files[attachment_id] = data

    async def chunks(self, attachment_id: str) -> AsyncIterator[bytes] | None:
        data = self.files.get(attachment_id)
        if data is None:
            return None

        async def read() -> AsyncIterator[bytes]:
            yield data

        return read()

    async def delete(self, attachment_id: str) -> None:
        self.files.pop(attachment_id, None)


# --------------------------------------------------------------------------- read model


class AttachmentOut(FrozenModel):
    attachment_id: str
    report_id: str
    incident_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    added_by: str
    added_at: datetime


class AttachmentViews:
    """`attachments`: what was attached to which report, written with the event."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db

    async def ensure_indexes(self) -> None:
        await self.db[ATTACHMENTS].create_index([("report_id", ASCENDING)])

    async def apply(self, event: Envelope, uow: UnitOfWork) -> None:
        payload = event.payload
        if not isinstance(payload, AttachmentAdded):
            return
        await self.db[ATTACHMENTS].insert_one(
            {
                "_id": payload.attachment_id,
                "attachment_id": payload.attachment_id,
                "report_id": payload.report_id,
                "incident_id": event.incident_id,
                "filename": payload.filename,
                "content_type": payload.content_type,
                "size": payload.size,
                "sha256": payload.sha256,
                "added_by": payload.added_by,
                "added_at": event.occurred_at,
            },
            session=uow.session,
        )

    async def of_report(self, report_id: str) -> list[AttachmentOut]:
        cursor = self.db[ATTACHMENTS].find(
            {"report_id": report_id}, {"_id": 0}, sort=[("added_at", ASCENDING)]
        )
        return [AttachmentOut.model_validate(doc) async for doc in cursor]

    async def get(self, attachment_id: str) -> AttachmentOut | None:
        doc = await self.db[ATTACHMENTS].find_one({"_id": attachment_id}, {"_id": 0})
        return None if doc is None else AttachmentOut.model_validate(doc)


# --------------------------------------------------------------------------- commands


class AttachmentCommands:
    def __init__(
        self,
        incidents: Repository[Incident],
        views: IntakeViews,
        attachments: AttachmentViews,
        store: AttachmentStore,
        policy: AttachmentPolicy,
        run: CommandRunner,
        visibility: Visibility,
        clock: Clock,
    ) -> None:
        self.incidents = incidents
        self.views = views
        self.attachments = attachments
        self.store = store
        self.policy = policy
        self.run = run
        self.visibility = visibility
        self.clock = clock

    async def visible_report(self, caller: Caller, report_id: str) -> ReportOut:
        """The report, for a caller who may see its files (404 otherwise: a partner sees
        only the files of reports it filed)."""
        found = await self.views.report(report_id)
        scope = await self.views.incident_scope(found.incident_id) if found else None
        sight = self.visibility.sight(caller, scope)
        if found is None or sight is Sight.NONE:
            raise hidden("report", report_id)
        if sight is Sight.REFERRED and found.filed_by != caller.id:
            raise hidden("report", report_id)
        return found

    async def may_attach(self, caller: Caller, report_id: str) -> None:
        """404 for a report out of sight, 403 for a caller who may not attach to it; asked
        before the upload is read, and again when the event is recorded."""
        report = await self.visible_report(caller, report_id)
        caller.require(*ATTACHERS)
        scope = await self.views.incident_scope(report.incident_id)
        assert scope is not None, "visible_report found it"
        _may_attach(self.visibility, caller, report, scope)

    async def add(
        self, report_id: str, filename: str | None, data: bytes, caller: Caller
    ) -> AttachmentOut:
        await self.may_attach(caller, report_id)
        name = clean_filename(filename)
        mime = checked(data, self.policy)
        digest = hashlib.sha256(data).hexdigest()
        attachment_id = new_attachment_id()

        async def work(uow: UnitOfWork) -> AttachmentOut:
            report = await self.views.report(report_id, uow.session)
            assert report is not None, "a report is never deleted"
            incident = await self.incidents.get(uow, report.incident_id)
            if incident is None:
                raise hidden("report", report_id)
            _may_attach(self.visibility, caller, report, _scope(incident))
            at = self.clock()
            event = AttachmentAdded(
                attachment_id=attachment_id,
                report_id=report_id,
                filename=name,
                content_type=mime,
                size=len(data),
                sha256=digest,
                added_by=caller.id,
            )
            await self.incidents.save(
                uow,
                incident.incident_id,
                incident,
                [event],
                Cause(caller.actor, incident.incident_id, incident.unit_ids[0], occurred_at=at),
            )
            return AttachmentOut(
                incident_id=incident.incident_id, added_at=at, **event.model_dump()
            )

        await self.store.put(
            attachment_id,
            name,
            data,
            {"report_id": report_id, "content_type": mime, "sha256": digest, "by": caller.id},
        )
        try:
            return await self.run(work)
        except BaseException:
            # Nothing half-stored: the file goes when its event could not be recorded.
            await self.store.delete(attachment_id)
            raise

    async def of_report(self, report_id: str, caller: Caller) -> list[AttachmentOut]:
        """The report's files in the caller's sight (a partner: those it added itself)."""
        await self.visible_report(caller, report_id)
        found = await self.attachments.of_report(report_id)
        return [a for a in found if a.added_by == caller.id] if caller.is_partner else found

    async def download(
        self, attachment_id: str, caller: Caller
    ) -> tuple[AttachmentOut, AsyncIterator[bytes]]:
        found = await self.attachments.get(attachment_id)
        if found is None:
            raise hidden("attachment", attachment_id)
        try:
            await self.visible_report(caller, found.report_id)
        except NotFound:
            raise hidden("attachment", attachment_id) from None
        if caller.is_partner and found.added_by != caller.id:
            raise hidden("attachment", attachment_id)
        chunks = await self.store.chunks(attachment_id)
        if chunks is None:
            raise hidden("attachment", attachment_id)
        return found, chunks


def _scope(incident: Incident) -> IncidentScope:
    return scope_of(incident.incident_id, incident.unit_ids, incident.filed_by)


def _may_attach(
    visibility: Visibility, caller: Caller, report: ReportOut, scope: IncidentScope
) -> None:
    """A partner attaches to the reports it filed; anyone else to the reports of an
    incident it may act on (every unit of it in its hands)."""
    if caller.is_partner:
        if report.filed_by != caller.id:
            raise Forbidden(f"{caller.id} may attach files only to reports it filed")
    elif not visibility.may_act_on(caller, scope):
        raise Forbidden(
            f"{caller.id} may not act for every unit of incident {scope.incident_id}",
            {"unit_ids": list(scope.unit_ids)},
        )
