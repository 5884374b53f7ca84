"""livekit-agents against a live Parley: what cmd/parley's TestLiveKitAgents runs.

Environment: PARLEY_URL (http://host:port), PARLEY_TOKEN (a bearer token),
SEEDED_CONVERSATION (a conversation the Go test filled, with its expectations
in SEEDED_EXPECT, a JSON file), EMPTY_CONVERSATION (an empty one).

1. GetChatContext of the seeded conversation loads with ChatContext.from_dict
   and has the kinds, order, ids, interrupted flags and metrics the Go side
   stored.
2. A context of every item kind, built here, goes through AppendItems as its
   to_dict() JSON (items_json) and comes back from GetChatContext equal.
3. Items of a newer livekit-agents, simulated by models with fields 1.8.9
   lacks (FUTURE_CONVERSATION, empty), come back with those fields through
   the newer models' from_dict/to_dict; 1.8.9's own from_dict still loads
   them, without the fields; ListItems shows the fields in unknownJson.
Exits non-zero, saying why, on the first difference.
"""

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Annotated, Any, Union

from livekit.agents.llm import AgentConfigUpdate, AgentHandoff, ChatContext, ChatMessage, FunctionCall, FunctionCallOutput
from livekit.agents.llm import chat_context as chat_context_module
from livekit.agents.llm.chat_context import MetricsReport
from pydantic import Field, TypeAdapter

from chat_context import T0, all_kinds, to_dict

URL = os.environ["PARLEY_URL"]
TOKEN = os.environ["PARLEY_TOKEN"]


def call(method: str, body: dict) -> dict:
    """One unary Connect JSON call to ConversationService."""
    req = urllib.request.Request(
        f"{URL}/parley.v1.ConversationService/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method}: HTTP {e.code}: {e.read().decode()}")


def fail(msg: str) -> None:
    sys.exit(f"FAIL: {msg}")


def restore(conversation_id: str, from_dict=ChatContext.from_dict, **budget) -> tuple[ChatContext, dict]:
    resp = call("GetChatContext", {"conversationId": conversation_id, **budget})
    ctx = from_dict(json.loads(resp["chatContextJson"]))
    return ctx, resp


# A newer livekit-agents, as far as Parley can tell: fields 1.8.9 does not
# define on a message, its metrics and a function call.
class FutureMetrics(MetricsReport, total=False):
    speech_rate: float


class FutureChatMessage(ChatMessage):
    sentiment: dict[str, Any] | None = None
    metrics: FutureMetrics = Field(default_factory=lambda: FutureMetrics())


class FutureFunctionCall(FunctionCall):
    cost_usd: float | None = None


# ChatMessage's annotations name types of livekit-agents' module.
for model in (FutureChatMessage, FutureFunctionCall):
    model.model_rebuild(_types_namespace=vars(chat_context_module))

FutureChatItem = Annotated[
    Union[FutureChatMessage, FutureFunctionCall, FunctionCallOutput, AgentHandoff, AgentConfigUpdate],
    Field(discriminator="type"),
]


def future_from_dict(data: dict) -> ChatContext:
    """ChatContext.from_dict as the newer release would have it."""
    return ChatContext(TypeAdapter(list[FutureChatItem]).validate_python(data["items"]))


def check_seeded() -> None:
    with open(os.environ["SEEDED_EXPECT"]) as f:
        want = json.load(f)
    ctx, resp = restore(os.environ["SEEDED_CONVERSATION"])
    got = [{"id": it.id, "type": it.type} for it in ctx.items]
    if got != [{"id": w["id"], "type": w["type"]} for w in want]:
        fail(f"seeded context: kinds and ids {got}, want {want}")
    for it, w in zip(ctx.items, want):
        if it.type == "message":
            if it.interrupted != w["interrupted"]:
                fail(f"{it.id}: interrupted {it.interrupted}, want {w['interrupted']}")
            if it.role != w["role"] or it.text_content != w["text"]:
                fail(f"{it.id}: {it.role} {it.text_content!r}, want {w['role']} {w['text']!r}")
            if dict(it.metrics) != w["metrics"]:
                fail(f"{it.id}: metrics {it.metrics}, want {w['metrics']}")
        if it.type == "function_call_output" and (it.call_id, it.is_error) != (w["call_id"], w["is_error"]):
            fail(f"{it.id}: output of {it.call_id} is_error {it.is_error}, want {w}")
    if int(resp["lastSeq"]) != len(want) or resp.get("truncated"):
        fail(f"seeded context: last_seq {resp.get('lastSeq')}, truncated {resp.get('truncated')}")
    # A budget that cuts between the call and its output keeps neither half
    # of the output's pair.
    last2, resp = restore(os.environ["SEEDED_CONVERSATION"], maxItems=len(want) - 4)
    if not resp.get("truncated"):
        fail("a budget smaller than the context did not truncate it")
    ids = {it.id for it in last2.items}
    for it in last2.items:
        if it.type == "function_call_output" and not any(
            c.type == "function_call" and c.call_id == it.call_id for c in last2.items
        ):
            fail(f"budgeted context kept output {it.id} without its call: {sorted(ids)}")
    print(f"seeded: {len(ctx.items)} items restored by from_dict")


def check_round_trip() -> None:
    conv = os.environ["EMPTY_CONVERSATION"]
    original = all_kinds(prefix="py")
    sent = to_dict(original)
    body = {"conversationId": conv, "itemsJson": json.dumps(sent), "agent": "python"}
    first = call("AppendItems", body)
    if first.get("replayed") or len(first["items"]) != len(original.items):
        fail(f"AppendItems stored {len(first['items'])} of {len(original.items)} items, replayed {first.get('replayed')}")
    again = call("AppendItems", body)
    if not again.get("replayed"):
        fail("the same items_json appended again was not a replay")
    back, _ = restore(conv)
    got = to_dict(back)
    if got != sent:
        for a, b in zip(sent["items"], got["items"]):
            if a != b:
                fail(f"read back differs:\n sent {a}\n got  {b}")
        fail(f"read back {len(got['items'])} items, sent {len(sent['items'])}")
    # The floats, bit for bit (== on floats is that already; say it).
    for a, b in zip(sent["items"], got["items"]):
        if a.get("created_at", 0).hex() != b.get("created_at", 0).hex():
            fail(f"{a['id']}: created_at {a['created_at']!r} came back as {b['created_at']!r}")
    # Excluding instructions leaves out exactly the system and developer messages.
    bare, _ = restore(conv, excludeInstructions=True)
    want = original.copy(exclude_instructions=True)
    if to_dict(bare) != to_dict(want):
        fail("exclude_instructions differs from livekit-agents' copy(exclude_instructions=True)")
    print(f"round trip: {len(sent['items'])} items of every kind equal after AppendItems and GetChatContext")


def check_future() -> None:
    conv = os.environ["FUTURE_CONVERSATION"]
    ctx = ChatContext(
        [
            FutureChatMessage(
                id="fut_user", role="user", content=["Hi"], sentiment={"label": "calm", "score": 0.25},
                metrics={"started_speaking_at": T0, "speech_rate": 2.5}, created_at=T0,
            ),
            FutureFunctionCall(id="fut_call", call_id="call_f", name="lookup", arguments="{}", cost_usd=0.0125, created_at=T0 + 1),
        ]
    )
    sent = to_dict(ctx)
    new = {"sentiment": {"label": "calm", "score": 0.25}, "cost_usd": 0.0125}
    if sent["items"][0].get("sentiment") != new["sentiment"] or sent["items"][0]["metrics"].get("speech_rate") != 2.5 or sent["items"][1].get("cost_usd") != new["cost_usd"]:
        fail(f"the newer models did not write their fields: {sent}")
    call("AppendItems", {"conversationId": conv, "itemsJson": json.dumps(sent), "agent": "python-next"})
    back, _ = restore(conv, from_dict=future_from_dict)
    if to_dict(back) != sent:
        fail(f"a newer release's items came back changed:\n sent {sent}\n got  {to_dict(back)}")
    # 1.8.9 loads the same context, ignoring what it does not define.
    old, _ = restore(conv)
    want = json.loads(json.dumps(sent))
    del want["items"][0]["sentiment"], want["items"][0]["metrics"]["speech_rate"], want["items"][1]["cost_usd"]
    if to_dict(old) != want:
        fail(f"1.8.9's from_dict of a newer release's items:\n got  {to_dict(old)}\n want {want}")
    listed = call("ListItems", {"conversationId": conv, "order": "ORDER_OLDEST_FIRST"})["items"]
    msg, fc = listed[0]["item"]["message"], listed[1]["item"]["functionCall"]
    got = {k: json.loads(v) for k, v in {**msg.get("unknownJson", {}), **fc.get("unknownJson", {})}.items()}
    got_metrics = {k: json.loads(v) for k, v in msg.get("metrics", {}).get("unknownJson", {}).items()}
    if got != new or got_metrics != {"speech_rate": 2.5}:
        fail(f"ListItems unknownJson {got}, metrics {got_metrics}; want {new} and speech_rate")
    print("future: keys 1.8.9 does not define survive AppendItems, GetChatContext and ListItems")


if __name__ == "__main__":
    check_seeded()
    check_round_trip()
    check_future()
    print("OK")
