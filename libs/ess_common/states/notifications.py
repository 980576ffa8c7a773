"""The notification state machine: one notice to one target, sent at most once.

    pending ─send────▶ sent      (delivered)
    pending ─give_up─▶ failed    (refused for good, or out of attempts)

A notification is made `pending` (`ess_notifier`); its attempts and next time are counted
on it while it stays pending.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Notification, NotificationStatus, utcnow
from ess_common.states.transitions import Transition, table

PENDING = NotificationStatus.PENDING
SENT, FAILED = NotificationStatus.SENT, NotificationStatus.FAILED

SEND = Transition("send", (PENDING,), SENT)
GIVE_UP = Transition("give_up", (PENDING,), FAILED)

TRANSITIONS = (SEND, GIVE_UP)
TABLE = table(TRANSITIONS)


async def sent(session: AsyncSession, notification_id: int) -> Notification | None:
    """pending -> sent, now."""
    return await session.scalar(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status.in_(SEND.sources))
        .values(status=SEND.target, sent_at=utcnow(), last_error=None)
        .returning(Notification)
        .execution_options(populate_existing=True)
    )


async def give_up(session: AsyncSession, notification_id: int) -> Notification | None:
    """pending -> failed: it is not attempted again."""
    return await session.scalar(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status.in_(GIVE_UP.sources))
        .values(status=GIVE_UP.target)
        .returning(Notification)
        .execution_options(populate_existing=True)
    )
