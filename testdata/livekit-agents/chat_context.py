"""A livekit-agents ChatContext with every item kind and field to_dict() writes.

Imported by client_test.py; run alone it prints the context's to_dict() JSON,
internal/agentsjson's fixture (testdata/all_kinds.json there).
"""

import json
import sys

from livekit.agents.llm import (
    AgentConfigUpdate,
    AgentHandoff,
    ChatContext,
    ChatMessage,
    FunctionCall,
    FunctionCallOutput,
    ImageContent,
)
from livekit.agents.llm.chat_context import CacheBreakpoint

# Fixed times, one with the most digits a float holds at this magnitude.
T0 = 1733097600.1234567


def all_kinds(prefix: str = "item") -> ChatContext:
    ctx = ChatContext()
    ctx.items.extend(
        [
            ChatMessage(
                id=f"{prefix}_sys",
                role="system",
                content=["You are a helpful assistant.", CacheBreakpoint()],
                created_at=T0,
            ),
            ChatMessage(
                id=f"{prefix}_dev",
                role="developer",
                content=["Answer in one sentence."],
                created_at=T0 + 0.5,
            ),
            ChatMessage(
                id=f"{prefix}_user",
                role="user",
                content=["What's the weather in Paris? <b>& \u00e9\u6f22\U0001f600", "second part"],
                transcript_confidence=0.9375,
                extra={"lang": "en", "n": 3, "big": 12345678901234567890, "f": 0.1, "none": None, "nested": {"a": [1, "b", None]}},
                metrics={
                    "started_speaking_at": T0 + 1,
                    "stopped_speaking_at": T0 + 2.25,
                    "transcription_delay": 0.12,
                    "end_of_turn_delay": 0.4,
                    "on_user_turn_completed_delay": 0.001,
                    "stt_metadata": {"model_name": "nova-3", "model_provider": "deepgram"},
                },
                created_at=1733097601.7654321,
            ),
            FunctionCall(
                id=f"{prefix}_call",
                call_id="call_1",
                name="get_weather",
                arguments='{"city": "Paris"}',
                extra={"google": {"thought_signature": "abc"}},
                group_id="grp_1",
                created_at=T0 + 3,
            ),
            FunctionCallOutput(
                id=f"{prefix}_out",
                call_id="call_1",
                name="get_weather",
                output="rain, 12C",
                is_error=True,
                reply_required=False,
                created_at=T0 + 4,
            ),
            ChatMessage(
                id=f"{prefix}_asst",
                role="assistant",
                content=["It is raining in Par"],
                interrupted=True,
                metrics={
                    "started_speaking_at": T0 + 5,
                    "llm_node_ttft": 0.25,
                    "llm_node_tps": 42.5,
                    "llm_node_ttfs": 0.5,
                    "tts_node_ttfb": 0.125,
                    "playback_latency": 1e-05,
                    "e2e_latency": 0.875,
                    "provider_request_ids": ["req_1", "req_2"],
                    "llm_metadata": {"model_name": "gpt-4o"},
                    "tts_metadata": {"model_provider": "cartesia"},
                },
                created_at=T0 + 5,
            ),
            ChatMessage(
                id=f"{prefix}_img",
                role="user",
                content=[
                    ImageContent(id="img_1", image="https://example.com/cat.jpg", inference_width=512, inference_height=256, inference_detail="low", mime_type="image/jpeg"),
                    ImageContent(id="img_2", image="data:image/png;base64,iVBORw0KGgo="),
                ],
                created_at=T0 + 6,
            ),
            FunctionCall(id=f"{prefix}_call2", call_id="call_2", name="lookup", arguments="{}", created_at=T0 + 7),
            FunctionCallOutput(id=f"{prefix}_out2", call_id="call_2", output="", is_error=False, created_at=T0 + 8),
            AgentHandoff(id=f"{prefix}_handoff", old_agent_id="greeter", new_agent_id="weather", created_at=T0 + 9),
            AgentHandoff(id=f"{prefix}_handoff0", new_agent_id="greeter", created_at=T0 + 10),
            AgentConfigUpdate(id=f"{prefix}_cfg", instructions="Be brief.", tools_added=["get_weather"], tools_removed=[], created_at=T0 + 11),
            AgentConfigUpdate(id=f"{prefix}_cfg0", created_at=T0 + 12),
        ]
    )
    return ctx


def to_dict(ctx: ChatContext) -> dict:
    """The full dict: timestamps and images kept."""
    return ctx.to_dict(exclude_timestamp=False, exclude_image=False)


if __name__ == "__main__":
    json.dump(to_dict(all_kinds()), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
