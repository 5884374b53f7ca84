// Conversion between @livekit/agents chat items and the JSON of Python
// livekit-agents' ChatContext.to_dict()/from_dict(), the one dialect
// Parley's AppendItems.items_json and GetChatContext.chat_context_json
// speak (internal/agentsjson). The Node framework's own toJSON() is
// camelCase with createdAt in milliseconds and has no fromJSON, so the
// package does both directions here rather than teach the server a second
// dialect.

import { llm } from '@livekit/agents';

/** An item as livekit-agents' to_dict() writes it. */
export type ItemDict = Record<string, unknown>;

const snake = (k: string): string => k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
const camel = (k: string): string => k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

// Metrics keys differ only in case between the two frameworks, nested
// model metadata included; their timestamps are seconds in both.
function rekey(v: unknown, key: (k: string) => string): unknown {
  if (Array.isArray(v)) return v.map((x) => rekey(x, key));
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (x !== undefined) out[key(k)] = rekey(x, key);
  }
  return out;
}

const seconds = (ms: number): number => ms / 1000;
const millis = (s: unknown): number | undefined => (typeof s === 'number' ? Math.round(s * 1000) : undefined);
const nonEmpty = (o: object | undefined): boolean => o !== undefined && Object.keys(o).length > 0;

function contentDict(c: llm.ChatContent): unknown {
  if (typeof c === 'string') return c;
  if (c instanceof llm.Instructions) return c.value;
  if (c.type === 'image_content') {
    const d: ItemDict = { type: 'image_content', id: c.id, image: typeof c.image === 'string' ? c.image : undefined };
    if (d.image === undefined) return undefined; // a video frame is media, not history
    if (c.inferenceDetail) d.inference_detail = c.inferenceDetail;
    if (c.inferenceWidth !== undefined) d.inference_width = c.inferenceWidth;
    if (c.inferenceHeight !== undefined) d.inference_height = c.inferenceHeight;
    if (c.mimeType !== undefined) d.mime_type = c.mimeType;
    return d;
  }
  return undefined; // audio frames are not chat history
}

/** Whether the item is one Parley keeps: every kind, audio content aside. */
export function isRecorded(item: llm.ChatItem): boolean {
  return ['message', 'function_call', 'function_call_output', 'agent_handoff', 'agent_config_update'].includes(item.type);
}

/** The item as livekit-agents' to_dict(exclude_timestamp=False, exclude_image=False) writes it. */
export function toDict(item: llm.ChatItem): ItemDict {
  const at = seconds(item.createdAt);
  switch (item.type) {
    case 'message': {
      const d: ItemDict = {
        id: item.id,
        type: 'message',
        role: item.role,
        content: item.content.map(contentDict).filter((c) => c !== undefined),
        interrupted: item.interrupted,
        created_at: at,
      };
      if (item.transcriptConfidence !== undefined) d.transcript_confidence = item.transcriptConfidence;
      if (nonEmpty(item.metrics)) d.metrics = rekey(item.metrics, snake);
      if (nonEmpty(item.extra)) d.extra = item.extra;
      return d;
    }
    case 'function_call': {
      const d: ItemDict = { id: item.id, type: 'function_call', call_id: item.callId, arguments: item.args, name: item.name, created_at: at };
      let extra: Record<string, unknown> = { ...item.extra };
      // Python keeps Gemini's signature in extra["google"]; so does Parley.
      if (item.thoughtSignature && !(typeof extra.google === 'object' && extra.google !== null)) {
        extra = { ...extra, google: { thought_signature: item.thoughtSignature } };
      }
      if (nonEmpty(extra)) d.extra = extra;
      if (item.groupId) d.group_id = item.groupId;
      return d;
    }
    case 'function_call_output':
      return { id: item.id, type: 'function_call_output', name: item.name, call_id: item.callId, output: item.output, is_error: item.isError, created_at: at };
    case 'agent_handoff': {
      const d: ItemDict = { id: item.id, type: 'agent_handoff', new_agent_id: item.newAgentId, created_at: at };
      if (item.oldAgentId !== undefined) d.old_agent_id = item.oldAgentId;
      return d;
    }
    case 'agent_config_update': {
      const d: ItemDict = { id: item.id, type: 'agent_config_update', created_at: at };
      if (item.instructions !== undefined) d.instructions = typeof item.instructions === 'string' ? item.instructions : item.instructions.value;
      if (item.toolsAdded !== undefined) d.tools_added = item.toolsAdded;
      if (item.toolsRemoved !== undefined) d.tools_removed = item.toolsRemoved;
      return d;
    }
  }
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

function contentFrom(c: unknown): llm.ChatContent | undefined {
  if (typeof c === 'string') return c;
  if (c === null || typeof c !== 'object') return undefined;
  const d = c as ItemDict;
  if (d.type !== 'image_content' || typeof d.image !== 'string') return undefined;
  return llm.createImageContent({
    image: d.image,
    id: str(d.id),
    inferenceDetail: str(d.inference_detail) as 'auto' | 'high' | 'low' | undefined,
    inferenceWidth: typeof d.inference_width === 'number' ? d.inference_width : undefined,
    inferenceHeight: typeof d.inference_height === 'number' ? d.inference_height : undefined,
    mimeType: str(d.mime_type),
  });
}

/** The @livekit/agents item of a from_dict() dict; undefined for a kind Node has not. */
export function fromDict(d: ItemDict): llm.ChatItem | undefined {
  const id = str(d.id);
  const createdAt = millis(d.created_at);
  switch (d.type) {
    case 'message': {
      const content = (Array.isArray(d.content) ? d.content : []).map(contentFrom).filter((c): c is llm.ChatContent => c !== undefined);
      return llm.ChatMessage.create({
        id,
        createdAt,
        role: d.role as llm.ChatRole,
        content,
        interrupted: d.interrupted === true,
        transcriptConfidence: typeof d.transcript_confidence === 'number' ? d.transcript_confidence : undefined,
        metrics: (rekey(d.metrics ?? {}, camel) ?? {}) as llm.MetricsReport,
        extra: (d.extra ?? {}) as Record<string, unknown>,
      });
    }
    case 'function_call':
      return llm.FunctionCall.create({
        id,
        createdAt,
        callId: String(d.call_id),
        name: String(d.name),
        args: String(d.arguments),
        extra: (d.extra ?? {}) as Record<string, unknown>,
        groupId: str(d.group_id),
      });
    case 'function_call_output':
      return llm.FunctionCallOutput.create({
        id,
        createdAt,
        callId: String(d.call_id),
        name: str(d.name) ?? '',
        output: String(d.output),
        isError: d.is_error === true,
      });
    case 'agent_handoff':
      return llm.AgentHandoffItem.create({ id, createdAt, newAgentId: String(d.new_agent_id), oldAgentId: str(d.old_agent_id) });
    case 'agent_config_update':
      return llm.AgentConfigUpdate.create({
        id,
        createdAt,
        instructions: str(d.instructions),
        toolsAdded: Array.isArray(d.tools_added) ? (d.tools_added as string[]) : undefined,
        toolsRemoved: Array.isArray(d.tools_removed) ? (d.tools_removed as string[]) : undefined,
      });
  }
  return undefined;
}

/** A ChatContext of chat_context_json ({"items": [...]}, from_dict()'s input). */
export function chatContextFromJSON(json: string): llm.ChatContext {
  if (!json) return llm.ChatContext.empty();
  const parsed = JSON.parse(json) as { items?: ItemDict[] };
  const items = (parsed.items ?? []).map(fromDict).filter((i): i is llm.ChatItem => i !== undefined);
  return new llm.ChatContext(items);
}
