"""A SessionReport of a real livekit-agents AgentSession, text only.

Run alone in a venv with requirements.txt it prints SessionReport.to_dict()
as JSON: the fixture session_report.json beside it, which Parley's
ReportSession tests ingest. The session is real (scripted LLM, one function
call, usage reported); one interrupted assistant message with latency
metrics is added to its history, as a voice session would record one, since
a text-only session neither interrupts nor times speech.
"""

import asyncio
import json
import sys
from pathlib import Path

from livekit.agents.llm import ChatMessage
from livekit.agents.voice import AgentSession
from livekit.agents.voice.report import SessionReport

# The scripted LLM and agent every real-framework check shares.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python" / "tests"))
from scripted import Assistant, ScriptedLLM  # noqa: E402


async def main() -> None:
    session: AgentSession = AgentSession(llm=ScriptedLLM())
    await session.start(Assistant())
    for text in ["Hello there", "What is the weather in Paris?", "Goodbye"]:
        await session.run(user_input=text)
    await session.aclose()
    history = session.history.copy()
    history.items.append(
        ChatMessage(
            id="item_interrupted",
            role="assistant",
            content=["Sure, let me"],
            interrupted=True,
            metrics={"llm_node_ttft": 0.25, "tts_node_ttfb": 0.5, "e2e_latency": 1.5},
        )
    )
    report = SessionReport(
        job_id="AJ_fixture",
        room_id="RM_fixture",
        room="fixture-room",
        options=session.options,
        events=session._recorded_events,
        chat_history=history,
        model_usage=session.usage.model_usage,
        started_at=session._started_at,
        agent_name="py-agent",
    )
    print(json.dumps(report.to_dict(), indent=1))


asyncio.run(main())
