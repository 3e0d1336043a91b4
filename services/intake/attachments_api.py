"""Intake's routes for files attached to reports (services/intake/attachments.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from services.intake.attachments import (
    FIELD,
    AttachmentCommands,
    AttachmentOut,
    AttachmentViews,
    content_disposition,
)
from shared.auth import CurrentCaller
from shared.errors import Invalid


def add_attachment_routes(
    router: APIRouter, commands: AttachmentCommands, views: AttachmentViews
) -> None:
    """Add the attachment routes to intake's router (one router: every route in its table)."""

    @router.post(
        "/reports/{report_id}/attachments",
        response_model=AttachmentOut,
        status_code=status.HTTP_201_CREATED,
        summary="Attach a file to a report (screenshot, video, scanned reply, coverage)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": [FIELD],
                            "properties": {FIELD: {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
        responses={
            403: {"description": "may not act on its incident (a partner: not its own report)"},
            404: {"description": "no such report, or one the caller may not see"},
            413: {"description": "the file is larger than YUQING_ATTACHMENT_MAX_BYTES"},
            415: {"description": "the file's content is not of an allowed type"},
            422: {"description": "no file, an empty file, or a file without a name"},
        },
    )
    async def add_attachment(
        report_id: str, request: Request, caller: CurrentCaller
    ) -> AttachmentOut:
        # Who may attach is decided before the upload is read (the same 404 and 403 as
        # every other route), so the form is read here rather than declared.
        await commands.may_attach(caller, report_id)
        try:
            form = await request.form(max_files=1, max_fields=4)
        except (MultiPartException, HTTPException) as exc:
            reason = f"not a readable multipart/form-data upload: {getattr(exc, 'detail', exc)}"
            raise Invalid(FIELD, reason, "form") from None
        upload = form.get(FIELD)
        if not isinstance(upload, StarletteUpload):
            raise Invalid(FIELD, 'no file sent (multipart/form-data field "file")', "missing")
        data = await upload.read(commands.policy.max_bytes + 1)
        await form.close()
        return await commands.add(report_id, upload.filename, data, caller)

    @router.get(
        "/reports/{report_id}/attachments",
        response_model=list[AttachmentOut],
        summary="The files attached to a report, with their sha256",
        responses={404: {"description": "no such report, or one the caller may not see"}},
    )
    async def list_attachments(report_id: str, caller: CurrentCaller) -> list[AttachmentOut]:
        return await commands.of_report(report_id, caller)

    @router.get(
        "/attachments/{attachment_id}",
        summary="Download an attached file as stored (its sha256 in the X-Content-SHA256 header)",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            404: {"description": "no such file, or one the caller may not see"},
        },
    )
    async def download_attachment(attachment_id: str, caller: CurrentCaller) -> StreamingResponse:
        found, chunks = await commands.download(attachment_id, caller)
        return StreamingResponse(
            chunks,
            media_type=found.content_type,
            headers={
                "Content-Disposition": content_disposition(found.filename),
                "Content-Length": str(found.size),
                "X-Content-SHA256": found.sha256,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )
