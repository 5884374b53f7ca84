"""Real livekit-agents jobs whose session reports parley_livekit files with Parley.

Driven by cmd/parley's TestLiveKitAgentsReport. Environment: PARLEY_URL,
PARLEY_AGENT_KEY, PYTHONPATH with sdk/python/src, SCRIPT (the user turns,
a JSON list) and CALLS, a JSON list of {"name", "dispatch", "livekit_room"}:
for each, a job whose metadata is the dispatch CreateRoom made runs a
text-only AgentSession (scripted LLM and tool) persisted by persist_session,
then ends as the framework ends a job: the session closes and the job's
shutdown callbacks run, in which the SDK flushes the items and files the
job's own session report (JobContext.make_session_report). In the call
named "lossy" Parley's answers to the items of the weather turn are lost
(an internal error, so the SDK gives them up): only the report has them.
In "live" the first ReportSession is answered unavailable without reaching
Parley, so the SDK must retry; "optout" files no report (file_report=False).

Before each call's report goes out this script prints "REPORT <name>"
and waits for "GO", so the Go side sees the items stored live. Its last
line is "RESULT <json>": per call, the history's ids, the ids lost live,
ReportSession's attempts, and its counts for the report and for the same
report again (null when none was filed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from livekit.agents.testing import fake_job_context
from livekit.agents.voice import AgentSession

from parley_livekit import ParleyClient, ParleyError, ReportSessionResult, persist_session
from scripted import Assistant, ScriptedLLM


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def weather_turn(d: dict[str, Any]) -> bool:
    """Whether an item (its to_dict()) belongs to the script's weather turn."""
    if d.get("type") in ("function_call", "function_call_output"):
        return True
    text = " ".join(c for c in d.get("content", []) if isinstance(c, str))
    return d.get("type") == "message" and "weather" in text.lower()


class CheckClient(ParleyClient):
    """Parley's client, with the Go side's look before the first report and, when lossy, lost appends."""

    def __init__(self, *args: Any, name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.lossy = name == "lossy"
        self.flaky = name == "live"
        self.lost: list[str] = []
        self.attempts = 0

    async def append_items(self, conversation_id: str, items: Any, **kwargs: Any) -> Any:
        lost = [d["id"] for d in items if self.lossy and weather_turn(d)]
        if lost:
            self.lost.extend(i for i in lost if i not in self.lost)
            raise ParleyError("internal", "internal error")  # as Parley answers a bug; never sent
        return await super().append_items(conversation_id, items, **kwargs)

    async def report_session(self, call_id: str, report: Any) -> ReportSessionResult:
        self.attempts += 1
        if self.attempts == 1:
            print(f"REPORT {self.name}", flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if line.strip() != "GO":
                fail(f"expected GO, read {line!r}")
            if self.flaky:
                raise ParleyError("unavailable", "connection refused")  # as if Parley were away; never sent
        return await super().report_session(call_id, report)


def counts(r: ReportSessionResult | None) -> dict[str, int] | None:
    if r is None:
        return None
    return {"merged": r.items_merged, "replayed": r.items_replayed, "conflicting": r.items_conflicting}


async def run_call(call: dict[str, str], script: list[str]) -> dict[str, Any]:
    url, key = os.environ["PARLEY_URL"], os.environ["PARLEY_AGENT_KEY"]
    client = CheckClient(url, api_key=key, name=call["name"])
    opt_out = call["name"] == "optout"
    with fake_job_context(job_id=f"AJ_{call['name']}", job_metadata=call["dispatch"]) as job_ctx:
        # A worker's job names the room it was dispatched to and its agent.
        job_ctx.job.room.name = call["livekit_room"]
        job_ctx.job.agent_name = "py-agent"
        session: AgentSession = AgentSession(llm=ScriptedLLM())
        agent = Assistant()
        rec = await persist_session(session, agent, client, job_ctx=job_ctx, file_report=not opt_out)
        await session.start(agent)
        for text in script:
            await session.run(user_input=text)
        # The job's end as livekit-agents runs it (_shutdown_job): the
        # session closes, then the shutdown callbacks run with the reason.
        await session.aclose()
        for cb in list(job_ctx._shutdown_callbacks):
            await cb("room deleted")
        history = [i.id for i in session.history.items]
        first, attempts = counts(rec.report_result), client.attempts
        if (first is None) != opt_out:
            fail(f"{call['name']}: report filed {first}")
        # The same report again, as a retry after a lost answer would send it.
        again = None if opt_out else counts(await rec.file_report(job_ctx.make_session_report(session)))
    await client.aclose()
    kinds = {i.type for i in session.history.items}
    if not {"message", "function_call", "function_call_output"} <= kinds:
        fail(f"history kinds {kinds}")
    if rec.dropped != len(client.lost):
        fail(f"{call['name']}: {len(client.lost)} items lost live, the SDK gave up {rec.dropped}")
    return {"history": history, "lost": client.lost, "attempts": attempts, "report": first, "again": again}


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("parley_livekit").setLevel(logging.INFO)
    script = json.loads(os.environ["SCRIPT"])
    calls = json.loads(os.environ["CALLS"])
    result = {c["name"]: await run_call(c, script) for c in calls}
    if result.get("lossy") is not None and not result["lossy"]["lost"]:
        fail("the lossy call lost nothing")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
