"""The archive's pure core, by subject:

- `ordering`: causal order of an incident's log (`Logged`, `causal_order`);
- `views`: what the archive shows of an incident (the view models);
- `fold`: the incident view as a fold of its log, one small step per event type;
- `timeline`: one Chinese line per event, with the catalogue's names;
- `chain`: the per-incident hash chain and its verification;
- `summaries`: the rows of the incident list;
- `cases`: the figures a case is archived with and the accountability figures;
- `assessment`: the assessment (考评) per unit and person, and the office's findings;
- `review`: deciding the review of a resolved incident.

Pure: no database, broker, web framework or settings.
"""

from services.archive.domain.chain import (
    GENESIS,
    SEAL_CONTEXT,
    ChainBreak,
    ChainLink,
    ChainReport,
    canonical_json,
    link_hash,
    seal_form,
    signature_problem,
    verify_chain,
)
from services.archive.domain.fold import STEPS, fold
from services.archive.domain.ordering import Logged, causal_order
from services.archive.domain.summaries import (
    IncidentSummary,
    incident_summary,
    partner_summary,
    unmet_deadlines,
)
from services.archive.domain.timeline import TimelineEntry, summarize, timeline
from services.archive.domain.views import (
    ApprovalView,
    Gap,
    GradeChange,
    IncidentView,
    NotificationView,
    ObligationView,
    PublicationView,
    ReferredIncidentView,
    ReportView,
    ReviewView,
    StatementView,
    partner_view,
    published_lines,
)

__all__ = [
    "GENESIS",
    "SEAL_CONTEXT",
    "STEPS",
    "ApprovalView",
    "ChainBreak",
    "ChainLink",
    "ChainReport",
    "Gap",
    "GradeChange",
    "IncidentSummary",
    "IncidentView",
    "Logged",
    "NotificationView",
    "ObligationView",
    "PublicationView",
    "ReferredIncidentView",
    "ReportView",
    "ReviewView",
    "StatementView",
    "TimelineEntry",
    "canonical_json",
    "causal_order",
    "fold",
    "incident_summary",
    "link_hash",
    "partner_summary",
    "partner_view",
    "published_lines",
    "seal_form",
    "signature_problem",
    "summarize",
    "timeline",
    "unmet_deadlines",
    "verify_chain",
]
