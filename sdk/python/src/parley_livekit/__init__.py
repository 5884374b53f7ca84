"""Parley for livekit-agents: restore an AgentSession's chat context, persist its items, file its report.

    client = ParleyClient(os.environ["PARLEY_URL"], api_key=os.environ["PARLEY_AGENT_KEY"])
    await persist_session(session, agent, client, job_ctx=ctx)
    await session.start(agent, room=ctx.room)
"""

from .client import (
    AgentToken,
    AppendItemsResult,
    ChatContextResult,
    Item,
    ItemsPage,
    ParleyClient,
    ParleyError,
    ReportSessionResult,
    item_dicts,
)
from .session import DispatchMetadata, SessionRecorder, persist_session

__all__ = [
    "AgentToken",
    "AppendItemsResult",
    "ChatContextResult",
    "DispatchMetadata",
    "Item",
    "ItemsPage",
    "ParleyClient",
    "ParleyError",
    "ReportSessionResult",
    "SessionRecorder",
    "item_dicts",
    "persist_session",
]
