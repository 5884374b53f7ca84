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
from typing import Any

from livekit.agents import APIConnectOptions, llm
from livekit.agents.llm import ChatMessage, function_tool
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.voice import Agent, AgentSession
from livekit.agents.voice.report import SessionReport


class ScriptedLLM(llm.LLM):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @property
    def model(self) -> str:
        return "scripted-1"

    @property
    def provider(self) -> str:
        return "parley-test"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.calls += 1
        return ScriptedStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options, n=self.calls)


class ScriptedStream(llm.LLMStream):
    def __init__(self, scripted: ScriptedLLM, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool], conn_options: APIConnectOptions, n: int) -> None:
        super().__init__(scripted, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._n = n

    async def _run(self) -> None:
        last = self._chat_ctx.items[-1]
        if last.type == "function_call_output":
            delta = llm.ChoiceDelta(role="assistant", content=f"The weather: {last.output}.")
        else:
            text = last.text_content if last.type == "message" else ""
            if text and "weather" in text.lower():
                delta = llm.ChoiceDelta(
                    role="assistant",
                    tool_calls=[llm.FunctionToolCall(name="get_weather", arguments='{"city": "Paris"}', call_id=f"call_{self._n}")],
                )
            else:
                delta = llm.ChoiceDelta(role="assistant", content=f"You said: {text}")
        usage = llm.CompletionUsage(completion_tokens=5 * self._n, prompt_tokens=20 * self._n, total_tokens=25 * self._n)
        self._event_ch.send_nowait(llm.ChatChunk(id=f"chunk_{self._n}", delta=delta, usage=usage))


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a terse assistant.")

    @function_tool
    async def get_weather(self, city: str) -> str:
        """Looks up the weather.

        Args:
            city: the city
        """
        return f"sunny in {city}"


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
