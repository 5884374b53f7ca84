"""The scripted agent the real-framework checks share: an LLM with canned replies and a tool.

Used by session_check.py and report_check.py here and by
testdata/livekit-agents/session_report.py (the ReportSession fixture), so
that every check runs the same conversation the fixture recorded.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import APIConnectOptions, llm
from livekit.agents.llm import function_tool
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.voice import Agent


class ScriptedLLM(llm.LLM):
    """Canned replies: a function call for a weather question, then its answer; an echo otherwise.

    Each reply reports usage (5n completion and 20n prompt tokens for the
    n-th), so a session's report has usage for model scripted-1.
    """

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
        delta: llm.ChoiceDelta
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
