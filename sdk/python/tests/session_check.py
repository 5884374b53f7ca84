"""A real livekit-agents AgentSession, text only, persisted to a live Parley.

Driven by cmd/parley's TestLiveKitAgentsSession. Environment: PARLEY_URL,
PARLEY_AGENT_KEY (from `parley agent-key create`), CONVERSATION_ID, and
PYTHONPATH with sdk/python/src. Protocol on stdout/stdin, one line each:
this script prints "KILL" when the Go side should stop Parley, goes on
talking while Parley is away, and waits for "RESTARTED"; it prints
"DISPATCH" and reads the job metadata of a room resuming the conversation,
for the second session; at the end it prints "STOP" and waits for
"STOPPED", Parley gone for good. Its last line is "RESULT <json>": the
sessions' item ids in history order. Exits non-zero, saying why, on the
first failed check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from livekit.agents import llm
from livekit.agents.voice import AgentSession

from parley_livekit import DispatchMetadata, ParleyClient, ParleyError, persist_session
from scripted import Assistant, ScriptedLLM


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def dicts(items: list[llm.ChatItem]) -> list[dict[str, Any]]:
    return llm.ChatContext(list(items)).to_dict(exclude_timestamp=False, exclude_image=False)["items"]


class WaitLog(logging.Handler):
    """Keeps parley_livekit's "items wait" lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.tokens = 0
        self.refused = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "wait" in msg or "unsent" in msg:
            self.lines.append(msg)
        if "token issued" in msg:
            self.tokens += 1
        if "token refused" in msg:
            self.refused += 1


async def turn(session: AgentSession, text: str) -> None:
    await session.run(user_input=text)


async def main() -> None:
    waits = WaitLog()
    logging.getLogger("parley_livekit").addHandler(waits)
    logging.getLogger("parley_livekit").setLevel(logging.INFO)
    url, key, conv = os.environ["PARLEY_URL"], os.environ["PARLEY_AGENT_KEY"], os.environ["CONVERSATION_ID"]
    client = ParleyClient(url, api_key=key, timeout=2.0)

    # The job's dispatch metadata, as internal/room writes it.
    class Job:
        metadata = json.dumps({"conversation_id": conv})
        agent_name = "py-agent"

    class JobCtx:
        job = Job()
        shutdown: list[Any] = []

        def add_shutdown_callback(self, cb: Any) -> None:
            self.shutdown.append(cb)

    if DispatchMetadata.parse(Job.metadata).conversation_id != conv:
        fail("dispatch metadata did not parse")

    # Session 1: two turns, Parley stopped, two more, Parley back, one more.
    agent = Assistant()
    session: AgentSession = AgentSession(llm=ScriptedLLM())
    job = JobCtx()
    rec = await persist_session(session, agent, client, job_ctx=job)
    await session.start(agent)
    await turn(session, "Hello there")
    await turn(session, "What is the weather in Paris?")
    print("KILL", flush=True)
    # Until Parley is really gone: the next items must find it away.
    while True:
        try:
            await client.list_items(conv, page_size=1)
            await asyncio.sleep(0.1)
        except Exception:
            break
    await turn(session, "Still there?")
    await turn(session, "And the weather again?")
    await asyncio.sleep(1.5)
    if rec.pending == 0 and not waits.lines:
        fail("Parley was away but no items waited")
    waiting = rec.pending
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "RESTARTED":
        fail(f"expected RESTARTED, read {line!r}")
    await turn(session, "Goodbye")
    await session.aclose()
    for cb in job.shutdown:
        await cb("done")
    history = list(session.history.items)

    # Parley has the history, in order, each id once.
    stored = await client.all_items(conv)
    got_ids = [i.id for i in stored]
    want_ids = [i.id for i in history]
    if got_ids != want_ids:
        fail(f"Parley's items {got_ids}\n  session history {want_ids}")
    if [i.seq for i in stored] != list(range(1, len(stored) + 1)):
        fail(f"seqs {[i.seq for i in stored]}")
    if {i.agent for i in stored} != {"py-agent"}:
        fail(f"agents {[i.agent for i in stored]}")
    if rec.dropped:
        fail(f"{rec.dropped} items refused")
    kinds = {i.type for i in history}
    if not {"message", "function_call", "function_call_output"} <= kinds:
        fail(f"history kinds {kinds}")

    # Session 2, same conversation, in a room that resumes it: its job
    # metadata is what Parley's CreateRoom dispatched.
    print("DISPATCH", flush=True)
    dispatched = (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()
    md = DispatchMetadata.parse(dispatched)
    if md.conversation_id != conv or md.last_seq != len(want_ids):
        fail(f"dispatch metadata {dispatched!r}: want conversation {conv}, last_seq {len(want_ids)}")

    class Job2:
        metadata = dispatched
        agent_name = "py-agent"

    agent2 = Assistant()
    session2: AgentSession = AgentSession(llm=ScriptedLLM())
    job2 = JobCtx()
    job2.job = Job2()
    job2.shutdown = []
    restored = (await client.get_chat_context(conv)).chat_context()
    # The dispatch names the room's call, but this stand-in job context makes
    # no session report: report_check.py files real ones.
    rec2 = await persist_session(session2, agent2, client, job_ctx=job2, file_report=False)
    if dicts(restored.items) != dicts(history):
        for a, b in zip(dicts(history), dicts(restored.items)):
            if a != b:
                fail(f"restored item differs:\n  session 1 {a}\n  restored  {b}")
        fail(f"restored {len(restored.items)} items, session 1 had {len(history)}")
    if [i.id for i in agent2.chat_ctx.items] != want_ids:
        fail(f"agent 2 starts with {[i.id for i in agent2.chat_ctx.items]}, want {want_ids}")
    await session2.start(agent2)
    await turn(session2, "I am back")
    await session2.aclose()
    for cb in job2.shutdown:
        await cb("done")
    after = await client.all_items(conv)
    new_ids = [i.id for i in session2.history.items]
    if [i.id for i in after] != want_ids + new_ids:
        fail(f"after session 2: {[i.id for i in after]}, want {want_ids + new_ids}")
    # The client's exactly-once answers: the same item again is a replay,
    # its id with other content already_exists.
    user_msg = next(i for i in history if i.type == "message" and i.role == "user")
    again = await client.append_items(conv, [user_msg], agent="py-agent")
    if not again.replayed or [i.id for i in again.items] != [user_msg.id]:
        fail(f"appending {user_msg.id} again: replayed {again.replayed}, items {again.items}")
    changed = user_msg.model_copy(update={"content": ["something else"]})
    try:
        await client.append_items(conv, [changed], agent="py-agent")
        fail(f"{user_msg.id} with other content was stored")
    except ParleyError as e:
        if e.code != "already_exists" or e.retryable:
            fail(f"{user_msg.id} with other content: {e.code} (retryable {e.retryable})")

    if not set(new_ids) <= rec2.stored_ids:
        fail(f"session 2's recorder lost track: stored {sorted(rec2.stored_ids)}, history {new_ids}")

    # A room resumed at session 1's end: the dispatch metadata's last_seq
    # cuts the restore there, leaving session 2 out.
    class Resumed:
        class job:
            metadata = json.dumps({"conversation_id": conv, "last_seq": len(want_ids)})
            agent_name = "py-agent"

        def add_shutdown_callback(self, cb: Any) -> None:
            pass

    agent3 = Assistant()
    await persist_session(AgentSession(llm=ScriptedLLM()), agent3, client, job_ctx=Resumed())
    if [i.id for i in agent3.chat_ctx.items] != want_ids:
        fail(f"resumed at last_seq {len(want_ids)}: {[i.id for i in agent3.chat_ctx.items]}, want {want_ids}")

    # Parley gone for good: the restore gives up after restore_timeout and
    # the agent starts without history; the shutdown flush gives up at its
    # deadline and says how many items it leaves.
    print("STOP", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "STOPPED":
        fail(f"expected STOPPED, read {line!r}")
    agent4, session4, job4 = Assistant(), AgentSession(llm=ScriptedLLM()), JobCtx()
    job4.shutdown = []
    t0 = time.monotonic()
    await persist_session(session4, agent4, client, job_ctx=job4, restore_timeout=1.0, shutdown_timeout=1.0)
    if time.monotonic() - t0 > 3 or agent4.chat_ctx.items:
        fail(f"restore without Parley took {time.monotonic() - t0:.1f}s and gave {len(agent4.chat_ctx.items)} items")
    await session4.start(agent4)
    await turn(session4, "Anyone?")
    await session4.aclose()
    t0 = time.monotonic()
    for cb in job4.shutdown:
        await cb("done")
    if time.monotonic() - t0 > 3 or not any("unsent" in m for m in waits.lines):
        fail(f"shutdown flush without Parley took {time.monotonic() - t0:.1f}s, log {waits.lines[-1:]}")
    await client.aclose()
    # The Go side gives agent tokens a few seconds of life: they were renewed.
    # Renewed before they expired, so Parley never refused one.
    if waits.tokens < 2 or waits.refused:
        fail(f"{waits.tokens} agent tokens issued, {waits.refused} refused, in a session longer than several token lifetimes")
    counts: dict[str, int] = {}
    for i in history:
        counts[i.type] = counts.get(i.type, 0) + 1
    print(f"session 1: {len(history)} items {counts}; session 2: {len(new_ids)}", flush=True)
    print(f"waited: {waiting} items; {waits.tokens} agent tokens; log: {waits.lines[:1]}", flush=True)
    print("RESULT " + json.dumps({"session1": want_ids, "session2": new_ids, "waited": waiting}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
