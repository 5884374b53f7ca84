"""Persist a livekit-agents AgentSession to Parley and restore it from there.

The session's event callbacks only turn items into dicts and put them on a
bounded queue; one task sends them in batches, in order, retrying with
backoff while Parley is away. Items carry their LiveKit ids, which Parley
stores exactly once, so a batch resent after a lost answer is a replay.
At the end the session's report (livekit-agents' SessionReport) is filed
with ReportSession, whose merge adds only what the live appends missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Union

from livekit.agents import llm
from livekit.agents.voice import Agent, AgentSession
from livekit.agents.voice.events import ConversationItemAddedEvent, FunctionToolsExecutedEvent

from .client import ParleyClient, ParleyError, ReportSessionResult, item_dicts

logger = logging.getLogger("parley_livekit")


@dataclass(frozen=True)
class DispatchMetadata:
    """What Parley puts in the job's dispatch metadata (internal/room.DispatchMetadata)."""

    conversation_id: str
    # last_seq is the conversation's last item when the room resumed it:
    # restore GetChatContext(until_seq=last_seq); 0 is up to the newest.
    last_seq: int = 0
    agent_metadata: str = ""
    # call_id is the room's id, which is its call's: ReportSession's call.
    # "" in a dispatch made by a Parley older than the session report.
    call_id: str = ""

    @classmethod
    def parse(cls, metadata: str) -> DispatchMetadata:
        try:
            d = json.loads(metadata) if metadata else {}
        except ValueError as e:
            raise ValueError(f"dispatch metadata is not JSON: {e}") from e
        if not isinstance(d, dict) or not d.get("conversation_id"):
            raise ValueError("dispatch metadata has no conversation_id")
        return cls(
            conversation_id=str(d["conversation_id"]),
            last_seq=int(d.get("last_seq") or 0),
            agent_metadata=str(d.get("agent_metadata") or ""),
            call_id=str(d.get("call_id") or ""),
        )


# A report: a SessionReport (anything with to_dict()), its dict or JSON,
# or a function that makes one, called once the items are flushed.
Report = Union[Any, dict[str, Any], str, Callable[[], Any]]


@dataclass(frozen=True)
class _Entry:
    id: str
    item: dict[str, Any]
    size: int  # of its JSON, for the batch's byte bound


class SessionRecorder:
    """Sends one AgentSession's items to one Parley conversation.

    Never blocks the voice pipeline: callbacks only enqueue. An item that
    finds the queue full is not marked sent, so the next sweep of
    ``session.history`` (and the final one at close) offers it again.
    """

    def __init__(
        self,
        client: ParleyClient,
        conversation_id: str,
        *,
        agent: str = "",
        call_id: str = "",
        max_queue: int = 10_000,
        batch_size: int = 100,
        batch_bytes: int = 4 << 20,
        max_backoff: float = 5.0,
    ) -> None:
        self.client = client
        self.conversation_id = conversation_id
        self.agent = agent
        self.call_id = call_id
        self.report_result: ReportSessionResult | None = None
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._max_backoff = max_backoff
        self._queued: set[str] = set()  # ids on the queue or stored
        self._stored: set[str] = set()  # ids Parley answered for
        self._dropped: int = 0  # items Parley refused for good
        self._session: AgentSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._inflight = 0
        self._carry: _Entry | None = None

    # -- restore

    async def restore(
        self,
        agent: Agent,
        *,
        until_seq: int = 0,
        max_items: int = 0,
        max_bytes: int = 0,
        timeout: float = 5.0,
    ) -> llm.ChatContext:
        """Loads the conversation into ``agent``'s chat context (call before session.start).

        While Parley is unreachable it retries for ``timeout`` seconds, then
        logs and returns an empty context: a caller waits for its agent no
        longer than that. Other errors (a wrong conversation id) raise.
        """
        deadline = time.monotonic() + timeout
        backoff = 0.2
        while True:
            try:
                # One answer that hangs must not outlast the timeout either.
                got = await asyncio.wait_for(
                    self.client.get_chat_context(
                        self.conversation_id, until_seq=until_seq, max_items=max_items, max_bytes=max_bytes
                    ),
                    max(deadline - time.monotonic(), 0.01),
                )
                break
            except (ParleyError, asyncio.TimeoutError) as err:
                e = err if isinstance(err, ParleyError) else ParleyError("deadline_exceeded", "GetChatContext took too long")
                if not e.retryable:
                    raise
                if time.monotonic() + backoff > deadline:
                    logger.error("parley: conversation %s not restored, starting without its history: %s", self.conversation_id, e)
                    return llm.ChatContext.empty()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        ctx = got.chat_context()
        # Restored items are Parley's already; never offer them again.
        self._queued.update(item.id for item in ctx.items)
        self._stored.update(item.id for item in ctx.items)
        merged = agent.chat_ctx.copy()
        merged.items.extend(ctx.items)
        await agent.update_chat_ctx(merged)
        logger.info(
            "restored %d items of conversation %s (seq %d..%d%s)",
            len(ctx.items), self.conversation_id, got.first_seq, got.last_seq, ", truncated" if got.truncated else "",
        )
        return ctx

    # -- record

    def attach(self, session: AgentSession) -> None:
        """Starts recording ``session``: its events from now on, and its history."""
        self._session = session
        session.on("conversation_item_added", self._on_item_added)
        session.on("function_tools_executed", self._on_tools_executed)
        session.on("close", self._on_close)
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="parley_livekit.flush")

    @property
    def pending(self) -> int:
        """Items waiting to be sent, the batch being sent included."""
        return self._queue.qsize() + self._inflight + (self._carry is not None)

    @property
    def stored_ids(self) -> set[str]:
        """The ids Parley has confirmed, restored ones included."""
        return set(self._stored)

    @property
    def dropped(self) -> int:
        """Items Parley refused for good (logged each), never retried."""
        return self._dropped

    def _on_item_added(self, ev: ConversationItemAddedEvent) -> None:
        # The history first: items that fire no event of their own (config
        # updates, calls recorded when they started) keep their order.
        self._sweep()
        self._offer([ev.item])

    def _on_tools_executed(self, ev: FunctionToolsExecutedEvent) -> None:
        # The event comes before the session adds the outputs to its
        # history; the call and then its output, in the order executed.
        self._sweep()
        items: list[llm.ChatItem] = []
        for call, out in ev.zipped():
            items.append(call)
            if out is not None:
                items.append(out)
        self._offer(items)

    def _on_close(self, _ev: Any) -> None:
        self._sweep()

    def _sweep(self) -> None:
        if self._session is not None:
            self._offer(self._session.history.items)

    def _offer(self, items: list[llm.ChatItem]) -> None:
        if self._closed:
            return
        fresh = [i for i in items if i.id not in self._queued and getattr(i, "type", "") != "audio"]
        if not fresh:
            return
        try:
            dicts = item_dicts(fresh)
        except Exception:  # a model's own item type; never break the session for it
            logger.exception("parley: could not convert %d items", len(fresh))
            return
        for item, d in zip(fresh, dicts):
            try:
                self._queue.put_nowait(_Entry(item.id, d, len(json.dumps(d))))
            except asyncio.QueueFull:
                logger.warning("parley: queue full (%d items wait); %s is offered again later", self._queue.qsize(), item.id)
                return
            self._queued.add(item.id)

    async def _flush_loop(self) -> None:
        backoff = 0.2
        last_log = 0.0
        while True:
            first = self._carry or await self._queue.get()
            self._carry = None
            batch, size = [first], first.size
            # Under Parley's request limit (16 MiB by default) with room to spare.
            while len(batch) < self._batch_size and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if size + nxt.size > self._batch_bytes:
                    self._carry = nxt  # the next batch's first
                    break
                batch.append(nxt)
                size += nxt.size
            self._inflight = len(batch)
            while True:
                try:
                    await self._send(batch)
                    if backoff > 0.2:
                        logger.info("parley: reachable again, %d items sent, %d wait", len(batch), self._queue.qsize())
                    backoff = 0.2
                    break
                except Exception as err:
                    if isinstance(err, ParleyError) and not err.retryable:
                        await self._send_singly(batch)
                        break
                    if not isinstance(err, ParleyError):
                        # A bug here must not end the task and strand the queue.
                        logger.exception("parley: unexpected error sending %d items", len(batch))
                    e = err if isinstance(err, ParleyError) else ParleyError("unknown", repr(err))
                    now = time.monotonic()
                    if now - last_log >= 5:
                        last_log = now
                        logger.warning("parley: %s; %d items wait, retrying in %.1fs", e, self.pending, backoff)
                    await asyncio.sleep(e.retry_after or backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self._max_backoff)
            self._inflight = 0
            for _ in batch:
                self._queue.task_done()

    async def _send(self, batch: list[_Entry]) -> None:
        await self.client.append_items(self.conversation_id, [e.item for e in batch], agent=self.agent)
        self._stored.update(e.id for e in batch)

    async def _send_singly(self, batch: list[_Entry]) -> None:
        """A batch Parley refused for good: keep every item it takes, drop and log the rest."""
        for entry in batch:
            backoff = 0.2
            while True:
                try:
                    await self._send([entry])
                    break
                except ParleyError as e:
                    if e.retryable:
                        await asyncio.sleep(e.retry_after or backoff)
                        backoff = min(backoff * 2, self._max_backoff)
                        continue
                    self._dropped += 1
                    logger.error("parley: item %s refused, not retried: %s", entry.id, e)
                    break

    async def aclose(self, *, timeout: float = 10.0, report: Report | None = None) -> ReportSessionResult | None:
        """Appends the final history and flushes, then files ``report``; all within ``timeout`` seconds.

        The report goes after the flush, so its merge finds the live items
        stored and adds only those they missed. Items still unsent at the
        deadline leave the report unfiled (logged): Parley was away.
        """
        deadline = time.monotonic() + timeout
        self._sweep()
        self._closed = True
        flushed = False
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            flushed = True
        except asyncio.TimeoutError:
            logger.error("parley: shutdown deadline passed with %d items unsent", self.pending)
        finally:
            if self._task is not None:
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):
                    pass
                self._task = None
        if report is None:
            return None
        if not flushed:
            logger.error("parley: session report of call %s not filed: the shutdown deadline passed", self.call_id)
            return None
        return await self.file_report(report, timeout=deadline - time.monotonic())

    async def file_report(self, report: Report, *, timeout: float = 10.0) -> ReportSessionResult | None:
        """Files a session report on the recorder's call, retrying for ``timeout`` seconds.

        Returns ReportSession's answer (also kept as ``report_result``), or
        None, logged, when there is no call id, the report cannot be made,
        Parley refuses it, or the deadline passes.
        """
        if not self.call_id:
            logger.warning("parley: no call id (the dispatch metadata has none); session report not filed")
            return None
        # From here, so making the report counts against the timeout too.
        deadline = time.monotonic() + timeout
        try:
            if callable(report) and not hasattr(report, "to_dict"):
                report = report()
            body = report if isinstance(report, (dict, str)) else report.to_dict()
            report_json = body if isinstance(body, str) else json.dumps(body)
        except Exception:  # a session that cannot report must still shut down
            logger.exception("parley: could not make the session report of call %s", self.call_id)
            return None
        backoff = 0.2
        while True:
            try:
                got = await asyncio.wait_for(
                    self.client.report_session(self.call_id, report_json), max(deadline - time.monotonic(), 0.01)
                )
                break
            except (ParleyError, asyncio.TimeoutError) as err:
                e = err if isinstance(err, ParleyError) else ParleyError("deadline_exceeded", "ReportSession took too long")
                if not e.retryable:
                    logger.error("parley: session report of call %s refused: %s", self.call_id, e)
                    return None
                wait = e.retry_after or backoff * (0.5 + random.random())
                if time.monotonic() + wait > deadline:
                    logger.error("parley: session report of call %s not filed by the deadline: %s", self.call_id, e)
                    return None
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, self._max_backoff)
        self.report_result = got
        logger.info(
            "parley: session report filed on call %s: %d items merged, %d already stored, %d conflicting",
            self.call_id, got.items_merged, got.items_replayed, got.items_conflicting,
        )
        return got


async def persist_session(
    session: AgentSession,
    agent: Agent,
    client: ParleyClient,
    *,
    job_ctx: Any = None,
    conversation_id: str | None = None,
    until_seq: int | None = None,
    agent_name: str = "",
    call_id: str | None = None,
    file_report: bool = True,
    restore_timeout: float = 5.0,
    shutdown_timeout: float = 10.0,
) -> SessionRecorder:
    """Restores ``agent`` from Parley and records ``session`` there; call before session.start.

    The conversation comes from ``conversation_id`` or the job's dispatch
    metadata (``job_ctx``, a livekit.agents.JobContext), whose ``last_seq``
    bounds the restore. With a job context, the final flush runs as one of
    its shutdown callbacks, and then, unless ``file_report=False``, files
    the job's session report (``job_ctx.make_session_report(session)``) on
    the call of the dispatch metadata's ``call_id``, all within
    ``shutdown_timeout``. Without one, ``await recorder.aclose(report=...)``
    once the session has closed.
    """
    if job_ctx is not None:
        try:
            md: DispatchMetadata | None = DispatchMetadata.parse(job_ctx.job.metadata)
        except ValueError:
            if conversation_id is None:
                raise
            md = None  # the caller names the conversation; the metadata is its own
        if md is not None and conversation_id in (None, md.conversation_id):
            conversation_id = md.conversation_id
            if until_seq is None:
                until_seq = md.last_seq
            if call_id is None:
                call_id = md.call_id
        if not agent_name:
            agent_name = job_ctx.job.agent_name
    if conversation_id is None:
        raise ValueError("persist_session needs a conversation_id or a job_ctx")
    rec = SessionRecorder(client, conversation_id, agent=agent_name, call_id=call_id or "")
    if file_report and job_ctx is not None and not rec.call_id:
        logger.warning("parley: the dispatch metadata has no call_id; the session report will not be filed")
    await rec.restore(agent, until_seq=until_seq or 0, timeout=restore_timeout)
    rec.attach(session)
    if job_ctx is not None:

        async def _shutdown(*_: Any) -> None:
            report = (lambda: job_ctx.make_session_report(session)) if file_report and rec.call_id else None
            await rec.aclose(timeout=shutdown_timeout, report=report)

        job_ctx.add_shutdown_callback(_shutdown)
    return rec
