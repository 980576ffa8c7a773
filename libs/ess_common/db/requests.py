"""Recording a request: one code path for the head API's POST and the broker's message."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics, tracing
from ess_common.catalogue import Catalogue, DatasetRefused
from ess_common.db import history
from ess_common.db.models import File, Request, RequestEventKind
from ess_common.errors import BadMessage, Conflict
from ess_common.events import DatasetFile, RequestSpec
from ess_common.states import files as file_states
from ess_common.states import requests as request_states


def spec_digest(spec: RequestSpec) -> str:
    canonical = RequestSpec.model_validate(spec.model_dump(include=set(RequestSpec.model_fields)))
    # `prepare` counts only when set, and a replica's RSE and URLs never (its file's sources
    # do): requests recorded before these existed keep their digest.
    exclude: dict[str, Any] = {"files": {"__all__": {"replicas": {"__all__": {"rse", "sources"}}}}}
    if canonical.prepare:
        exclude["prepare"] = True
    dumped = canonical.model_dump_json(exclude=exclude)
    return hashlib.sha256(dumped.encode()).hexdigest()


def as_spec(spec: RequestSpec) -> RequestSpec:
    """The request part of a `request.created` event, without its envelope."""
    return RequestSpec.model_validate(spec.model_dump(include=set(RequestSpec.model_fields)))


async def _recorded(session: AsyncSession, spec: RequestSpec, digest: str) -> Request | None:
    existing = await session.scalar(
        select(Request).where(Request.idempotency_key == spec.idempotency_key)
    )
    if existing is not None and existing.spec_digest != digest:
        raise Conflict(
            f"idempotency key {spec.idempotency_key!r} is already request {existing.id} "
            "with different content"
        )
    return existing


async def record_request(
    session: AsyncSession,
    spec: RequestSpec,
    *,
    request_id: str | None = None,
    catalogue: Catalogue | None = None,
    via: str = "bus",
    refused: str | None = None,
) -> tuple[Request, bool]:
    """Insert the request and its files, or return the one recorded under the same key.

    A resubmission is the same request; the same key with a different content is a conflict.
    A request with `prepare` false is ready at once (`request.ready` goes to the outbox): its
    files wait for pilots' on-demand asks. A request without files has them resolved in the
    catalogue; a dataset the catalogue refuses (unknown, empty, a file without an event count)
    is recorded failed with the reason, and `request.failed` goes to the outbox. Returns the
    request and whether it was created now. `via` (api, bus) is how it came, for the metrics.
    A request `refused` before its files are looked at (a URL the policy refuses, given as the
    reason) is recorded failed the same way.
    """
    digest = spec_digest(spec)
    existing = await _recorded(session, spec, digest)
    if existing is not None:
        return existing, False
    files = list(spec.files)
    if not files and refused is None:
        if catalogue is None:
            raise BadMessage(
                f"request {spec.idempotency_key!r} names no files and no catalogue is "
                "configured to resolve its dataset (ESS_RUCIO_URL)"
            )
        try:
            files = await catalogue.dataset_files(spec.dataset)
        except DatasetRefused as exc:
            refused = str(exc)
    try:
        async with session.begin_nested():
            request = await _insert(session, spec, digest, files, request_id, refused, via)
        metrics.on_commit(session, metrics.REQUESTS_RECEIVED.labels(via=via).inc)
        return request, True
    except IntegrityError:
        # Another process recorded the same key between our read and our insert.
        existing = await _recorded(session, spec, digest)
        if existing is None:
            raise
        return existing, False


async def _insert(
    session: AsyncSession,
    spec: RequestSpec,
    digest: str,
    files: list[DatasetFile],
    request_id: str | None,
    refused: str | None,
    via: str,
) -> Request:
    request = Request(
        id=request_id or str(uuid.uuid4()),
        idempotency_key=spec.idempotency_key,
        dataset=spec.dataset,
        events_per_range=spec.events_per_range,
        priority=spec.priority,
        notify_message=spec.notify.message,
        callback_url=spec.notify.callback_url,
        notify_files=spec.notify.files,
        spec_digest=digest,
        trace_context=tracing.current_headers() or None,
    )
    session.add(request)
    await session.flush()
    session.add_all(
        File(
            request_id=request.id,
            scope=f.scope,
            lfn=f.lfn,
            guid=f.guid,
            n_events=f.n_events,
            size=f.size,
            adler32=f.adler32,
            sources=list(f.sources),
            replicas=[r.model_dump(exclude_defaults=True) for r in f.replicas],
        )
        for f in files
    )
    await session.flush()
    tracing.bind_request(request.id)
    history.record(
        session,
        request.id,
        RequestEventKind.RECEIVED,
        detail=f"{len(files)} files, {spec.events_per_range} events per range ({via})",
    )
    # Made received, as every request; one refused, or preparing nothing, moves on at once.
    if refused is not None:
        await request_states.fail(session, request.id, refused)
    elif not spec.prepare:
        await file_states.leave_on_demand(session, request.id)
        await request_states.ready(
            session, request.id, n_files=len(files), n_ranges=0, detail="on demand only"
        )
    return request
