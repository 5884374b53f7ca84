"""A typed client for the few Parley RPCs an agent needs, over Connect JSON.

Unary Connect JSON is ``POST /parley.v1.<Service>/<Method>`` with a JSON
body; answers are proto JSON (lowerCamel names, int64 as strings), errors
``{"code": ..., "message": ...}``. Hand-written rather than generated: five
calls do not justify a protobuf runtime beside livekit-agents' own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import aiohttp

from livekit.agents import llm

logger = logging.getLogger("parley_livekit")

# Connect codes worth another try: the server, or the way to it, was away.
# resource_exhausted only with Retry-After (a rate limit); without, the
# body was over Parley's request limit and would be again.
RETRYABLE_CODES = frozenset({"unavailable", "deadline_exceeded", "aborted", "unknown"})


class ParleyError(Exception):
    """A Connect error from Parley, or ``unavailable`` when it could not be reached."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or (self.code == "resource_exhausted" and self.retry_after is not None)


def _timestamp(s: str | None) -> datetime | None:
    if not s:
        return None
    # proto JSON writes RFC 3339 with "Z" and up to 9 fractional digits;
    # fromisoformat takes at most 6 before Python 3.11.
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac, _, tz = rest.partition("+")
        s = f"{head}.{frac[:6]}+{tz}" if tz else f"{head}.{frac[:6]}"
    return datetime.fromisoformat(s).astimezone(timezone.utc)


@dataclass(frozen=True)
class AgentToken:
    """ExchangeAgentKey's answer."""

    access_token: str
    expires_at: datetime


@dataclass(frozen=True)
class Item:
    """One stored chat item (parley.v1.Item). ``item`` is the ChatItem's proto JSON."""

    conversation_id: str
    seq: int
    id: str
    kind: str
    agent: str
    message_id: str
    message_seq: int
    stored_at: datetime | None
    item: dict[str, Any]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Item:
        chat_item = d.get("item") or {}
        kind, body = next(iter(chat_item.items()), ("", {}))
        return cls(
            conversation_id=d.get("conversationId", ""),
            seq=int(d.get("seq", 0)),
            id=body.get("id", ""),
            kind=kind,
            agent=d.get("agent", ""),
            message_id=d.get("messageId", ""),
            message_seq=int(d.get("messageSeq", 0)),
            stored_at=_timestamp(d.get("storedAt")),
            item=chat_item,
        )


@dataclass(frozen=True)
class AppendItemsResult:
    """AppendItems' answer: the request's items as stored, and whether nothing was new."""

    items: list[Item]
    replayed: bool


@dataclass(frozen=True)
class ChatContextResult:
    """GetChatContext's answer; ``chat_context()`` loads it into livekit-agents."""

    chat_context_json: str
    first_seq: int
    last_seq: int
    truncated: bool

    def chat_context(self) -> llm.ChatContext:
        if not self.chat_context_json:
            return llm.ChatContext.empty()
        return llm.ChatContext.from_dict(json.loads(self.chat_context_json))


@dataclass(frozen=True)
class ItemsPage:
    """ListItems' answer."""

    conversation_id: str
    items: list[Item]
    next_page_token: str = ""


@dataclass(frozen=True)
class ReportSessionResult:
    """ReportSession's answer: what merging the report's chat history did.

    ``items_replayed`` are the items Parley already had (appended live or
    by an earlier report), ``items_merged`` those only the report brought,
    ``items_conflicting`` ids Parley holds with other content (kept as stored).
    """

    call_id: str
    reported_at: datetime | None
    items_merged: int
    items_replayed: int
    items_conflicting: int


@dataclass
class _Token:
    value: str = ""
    expires_at: float = 0.0  # time.time()
    issued_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def item_dicts(items: list[llm.ChatItem]) -> list[dict[str, Any]]:
    """The items as livekit-agents' to_dict() writes them, everything kept but audio.

    Parley's codec converts this JSON losslessly, timestamps and images
    included; audio frames are not chat history.
    """
    return llm.ChatContext(list(items)).to_dict(exclude_timestamp=False, exclude_image=False)["items"]


class ParleyClient:
    """Parley's agent-facing RPCs, authenticated by an agent key or a fixed token.

    With ``api_key`` the client exchanges it for agent tokens (ExchangeAgentKey),
    renews the token once most of its life has passed, and once more when an
    answer is ``unauthenticated`` (a revoked or rotated token).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        http: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not api_key and not token:
            raise ValueError("ParleyClient needs an api_key (parley agent-key create) or a token")
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._token = _Token(value=token or "", expires_at=float("inf") if token else 0.0)
        self._http = http
        self._own_http = http is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the RPCs

    async def exchange_agent_key(self, api_key: str) -> AgentToken:
        d = await self._call("AuthService", "ExchangeAgentKey", {"apiKey": api_key}, auth=False)
        expires = _timestamp(d.get("expiresAt"))
        return AgentToken(access_token=d["accessToken"], expires_at=expires or datetime.now(timezone.utc))

    async def append_items(
        self,
        conversation_id: str,
        items: list[llm.ChatItem] | list[dict[str, Any]],
        *,
        agent: str = "",
        message_id: str = "",
    ) -> AppendItemsResult:
        """Appends livekit-agents items (or their to_dict() dicts) by id, exactly once."""
        if all(isinstance(i, dict) for i in items):
            dicts = list(items)
        else:
            dicts = item_dicts(list(items))  # type: ignore[arg-type]
        body: dict[str, Any] = {"conversationId": conversation_id, "itemsJson": json.dumps({"items": dicts})}
        if agent:
            body["agent"] = agent
        if message_id:
            body["messageId"] = message_id
        d = await self._call("ConversationService", "AppendItems", body)
        return AppendItemsResult(items=[Item.from_json(i) for i in d.get("items", [])], replayed=bool(d.get("replayed")))

    async def get_chat_context(
        self,
        conversation_id: str,
        *,
        max_items: int = 0,
        max_bytes: int = 0,
        after_seq: int = 0,
        until_seq: int = 0,
        exclude_instructions: bool = False,
    ) -> ChatContextResult:
        body: dict[str, Any] = {"conversationId": conversation_id}
        for k, v in (("maxItems", max_items), ("maxBytes", str(max_bytes) if max_bytes else 0),
                     ("afterSeq", str(after_seq) if after_seq else 0), ("untilSeq", str(until_seq) if until_seq else 0)):
            if v:
                body[k] = v
        if exclude_instructions:
            body["excludeInstructions"] = True
        d = await self._call("ConversationService", "GetChatContext", body)
        return ChatContextResult(
            chat_context_json=d.get("chatContextJson", ""),
            first_seq=int(d.get("firstSeq", 0)),
            last_seq=int(d.get("lastSeq", 0)),
            truncated=bool(d.get("truncated")),
        )

    async def report_session(self, call_id: str, report: dict[str, Any] | str) -> ReportSessionResult:
        """Files a session report (SessionReport.to_dict(), or its JSON) on call ``call_id``.

        Parley stores it on the call and merges its chat history into the
        call's conversation by item id, so items appended live are not
        stored twice; the same report again merges nothing.
        """
        report_json = report if isinstance(report, str) else json.dumps(report)
        d = await self._call("CallService", "ReportSession", {"callId": call_id, "reportJson": report_json})
        call = d.get("call") or {}
        return ReportSessionResult(
            call_id=call.get("id", call_id),
            reported_at=_timestamp(call.get("reportedAt")),
            items_merged=int(d.get("itemsMerged", 0)),
            items_replayed=int(d.get("itemsReplayed", 0)),
            items_conflicting=int(d.get("itemsConflicting", 0)),
        )

    async def list_items(
        self,
        conversation_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        oldest_first: bool = False,
        agent: str = "",
    ) -> ItemsPage:
        body: dict[str, Any] = {"conversationId": conversation_id}
        if page_size:
            body["pageSize"] = page_size
        if page_token:
            body["pageToken"] = page_token
        if oldest_first:
            body["order"] = "ORDER_OLDEST_FIRST"
        if agent:
            body["agent"] = agent
        d = await self._call("ConversationService", "ListItems", body)
        return ItemsPage(
            conversation_id=d.get("conversationId", conversation_id),
            items=[Item.from_json(i) for i in d.get("items", [])],
            next_page_token=d.get("nextPageToken", ""),
        )

    async def all_items(self, conversation_id: str) -> list[Item]:
        """Every item of the conversation, oldest first."""
        out: list[Item] = []
        token = ""
        while True:
            page = await self.list_items(conversation_id, page_size=200, page_token=token, oldest_first=True)
            out.extend(page.items)
            token = page.next_page_token
            if not token:
                return out

    # -- transport

    async def _bearer(self, *, force: bool = False) -> str:
        t = self._token
        if not self._api_key:
            return t.value
        async with t.lock:
            now = time.time()
            # Renew once two thirds of the token's life have passed, so a
            # request never leaves with a token about to expire.
            renew_at = t.issued_at + (t.expires_at - t.issued_at) * 2 / 3
            if force or not t.value or now >= renew_at:
                got = await self.exchange_agent_key(self._api_key)
                t.value, t.issued_at, t.expires_at = got.access_token, now, got.expires_at.timestamp()
                logger.info("parley: agent token issued, expires at %s", got.expires_at.isoformat())
            return t.value

    async def _call(self, service: str, method: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        for attempt in range(2):
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = f"Bearer {await self._bearer(force=attempt > 0)}"
            try:
                return await self._post(f"/parley.v1.{service}/{method}", body, headers)
            except ParleyError as e:
                if e.code != "unauthenticated" or not auth or not self._api_key or attempt > 0:
                    raise
                logger.warning("parley: agent token refused (%s), renewing", e.message)
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.post(self._base + path, data=json.dumps(body), headers=headers, timeout=self._timeout) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return json.loads(text) if text else {}
                retry_after = resp.headers.get("Retry-After")
                try:
                    err = json.loads(text)
                    code, msg = err.get("code", "unknown"), err.get("message", "")
                except ValueError:
                    code, msg = ("unavailable" if resp.status in (502, 503, 504) else "unknown"), text[:200]
                raise ParleyError(code, msg, retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ParleyError("unavailable", f"{path}: {type(e).__name__}: {e}") from e
