"""Recording a request: one code path for the head API's POST and the broker's message."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import File, FileStatus, Request, RequestStatus, utcnow
from ess_common.errors import Conflict
from ess_common.events import RequestReady, RequestSpec
from ess_common.messaging.outbox import add_event


def spec_digest(spec: RequestSpec) -> str:
    canonical = RequestSpec.model_validate(spec.model_dump(include=set(RequestSpec.model_fields)))
    # `prepare` counts only when set: requests recorded before it existed keep their digest.
    dumped = canonical.model_dump_json(exclude={"prepare"} if canonical.prepare else None)
    return hashlib.sha256(dumped.encode()).hexdigest()


def as_spec(spec: RequestSpec) -> RequestSpec:
    """The request part of a `request.created` event, without its envelope."""
    return RequestSpec.model_validate(spec.model_dump(include=set(RequestSpec.model_fields)))


async def record_request(
    session: AsyncSession, spec: RequestSpec, *, request_id: str | None = None
) -> tuple[Request, bool]:
    """Insert the request and its files, or return the one recorded under the same key.

    A resubmission is the same request; the same key with a different content is a conflict.
    A request with `prepare` false is ready at once (`request.ready` goes to the outbox): its
    files wait for pilots' on-demand asks. Returns the request and whether it was created now.
    """
    digest = spec_digest(spec)
    existing = await session.scalar(
        select(Request).where(Request.idempotency_key == spec.idempotency_key)
    )
    if existing is None:
        try:
            async with session.begin_nested():
                existing = Request(
                    id=request_id or str(uuid.uuid4()),
                    idempotency_key=spec.idempotency_key,
                    dataset=spec.dataset,
                    events_per_range=spec.events_per_range,
                    priority=spec.priority,
                    notify_message=spec.notify.message,
                    callback_url=spec.notify.callback_url,
                    notify_files=spec.notify.files,
                    spec_digest=digest,
                    status=RequestStatus.RECEIVED if spec.prepare else RequestStatus.READY,
                    ready_at=None if spec.prepare else utcnow(),
                )
                session.add(existing)
                await session.flush()
                session.add_all(
                    File(
                        request_id=existing.id,
                        scope=f.scope,
                        lfn=f.lfn,
                        guid=f.guid,
                        n_events=f.n_events,
                        size=f.size,
                        adler32=f.adler32,
                        sources=list(f.sources),
                        replicas=[r.model_dump() for r in f.replicas],
                        status=FileStatus.PENDING if spec.prepare else FileStatus.ON_DEMAND,
                    )
                    for f in spec.files
                )
                await session.flush()
                if not spec.prepare:
                    add_event(
                        session,
                        RequestReady(
                            request_id=existing.id,
                            dataset=existing.dataset,
                            idempotency_key=existing.idempotency_key,
                            n_files=len(spec.files),
                            n_ranges=0,
                            correlation_id=existing.id,
                        ),
                    )
            return existing, True
        except IntegrityError:
            # Another process recorded the same key between our read and our insert.
            existing = await session.scalar(
                select(Request).where(Request.idempotency_key == spec.idempotency_key)
            )
            if existing is None:
                raise
    if existing.spec_digest != digest:
        raise Conflict(
            f"idempotency key {spec.idempotency_key!r} is already request {existing.id} "
            "with different content"
        )
    return existing, False
