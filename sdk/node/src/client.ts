// A typed client for the few Parley RPCs an agent needs, on connect-es
// (the generated client the web example uses) over connect-node.

import { Code, ConnectError, createClient, type Client, type Transport } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import type { llm } from '@livekit/agents';

import { AuthService } from './gen/parley/v1/auth_pb';
import { CallService } from './gen/parley/v1/call_pb';
import { ConversationService, Order } from './gen/parley/v1/conversation_pb';
import type { ChatContext_ChatItem, Item } from './gen/parley/v1/item_pb';
import { chatContextFromJSON, toDict, type ItemDict } from './agentsjson';

/**
 * ReportSession's answer: itemsReplayed are the items Parley already had
 * (appended live or by an earlier report), itemsMerged those only the
 * report brought, itemsConflicting ids Parley holds with other content.
 */
export interface ReportSessionResult {
  callId: string;
  reportedAt?: Date;
  itemsMerged: number;
  itemsReplayed: number;
  itemsConflicting: number;
}

/** Where the package logs; console by default. */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

// Connect codes worth another try: the server, or the way to it, was away.
// resource_exhausted only with Retry-After (a rate limit); without, the
// body was over Parley's request limit and would be again.
const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Unknown]);

/** A Connect error from Parley, or unavailable when it could not be reached. */
export class ParleyError extends Error {
  constructor(
    readonly code: Code,
    readonly rawMessage: string,
    readonly retryAfter?: number,
  ) {
    super(`${codeName(code)}: ${rawMessage}`);
  }

  /** The code as Connect's wire name, e.g. already_exists. */
  get codeName(): string {
    return codeName(this.code);
  }

  get retryable(): boolean {
    return RETRYABLE.has(this.code) || (this.code === Code.ResourceExhausted && this.retryAfter !== undefined);
  }

  static from(e: unknown): ParleyError {
    if (e instanceof ParleyError) return e;
    const ce = ConnectError.from(e);
    const ra = ce.metadata.get('Retry-After');
    const retryAfter = ra && /^\d+$/.test(ra) ? Number(ra) : undefined;
    return new ParleyError(ce.code, ce.rawMessage, retryAfter);
  }
}

function codeName(c: Code): string {
  return (Code[c] ?? 'unknown').replace(/[A-Z]/g, (x, i: number) => (i ? '_' : '') + x.toLowerCase());
}

/** The LiveKit id of a stored item, whatever its kind. */
export function chatItemId(it: ChatContext_ChatItem | undefined): string {
  return it?.item.value?.id ?? '';
}

/** GetChatContext's answer; chatContext() loads it into @livekit/agents. */
export class ChatContextResult {
  constructor(
    readonly chatContextJson: string,
    readonly firstSeq: bigint,
    readonly lastSeq: bigint,
    readonly truncated: boolean,
  ) {}

  chatContext(): llm.ChatContext {
    return chatContextFromJSON(this.chatContextJson);
  }
}

export interface ParleyClientOptions {
  /** An agent key (parley agent-key create), exchanged for agent tokens and renewed. */
  apiKey?: string;
  /** A fixed access token instead of an agent key. */
  token?: string;
  /** Per-call timeout in milliseconds (default 10 s). */
  timeoutMs?: number;
  logger?: Logger;
  /** A transport of one's own; baseUrl is then unused. */
  transport?: Transport;
}

/**
 * Parley's agent-facing RPCs, authenticated by an agent key or a fixed token.
 *
 * With apiKey the client exchanges it for agent tokens (ExchangeAgentKey),
 * renews the token once two thirds of its life have passed, and once more
 * when an answer is unauthenticated (a revoked or rotated token).
 */
export class ParleyClient {
  readonly auth: Client<typeof AuthService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly calls: Client<typeof CallService>;
  readonly logger: Logger;
  private readonly apiKey?: string;
  private token: string;
  private issuedAt = 0;
  private expiresAt: number;
  private renewing?: Promise<string>;

  constructor(baseUrl: string, opts: ParleyClientOptions = {}) {
    if (!opts.apiKey && !opts.token) throw new Error('ParleyClient needs an apiKey (parley agent-key create) or a token');
    this.apiKey = opts.apiKey;
    this.token = opts.token ?? '';
    this.expiresAt = opts.token ? Infinity : 0;
    this.logger = opts.logger ?? console;
    const transport =
      opts.transport ??
      createConnectTransport({ baseUrl, httpVersion: '1.1', defaultTimeoutMs: opts.timeoutMs ?? 10_000 });
    this.auth = createClient(AuthService, transport);
    this.conversations = createClient(ConversationService, transport);
    this.calls = createClient(CallService, transport);
  }

  private async bearer(force: boolean): Promise<string> {
    if (!this.apiKey) return this.token;
    // Renew once two thirds of the token's life have passed, so a request
    // never leaves with a token about to expire.
    const renewAt = this.issuedAt + ((this.expiresAt - this.issuedAt) * 2) / 3;
    if (!force && this.token && Date.now() < renewAt) return this.token;
    // One exchange at a time; concurrent callers share it.
    this.renewing ??= (async () => {
      try {
        const now = Date.now();
        const got = await this.exchangeAgentKey(this.apiKey!);
        this.token = got.accessToken;
        this.issuedAt = now;
        this.expiresAt = got.expiresAt.getTime();
        this.logger.info(`parley: agent token issued, expires at ${got.expiresAt.toISOString()}`);
        return this.token;
      } finally {
        this.renewing = undefined;
      }
    })();
    return this.renewing;
  }

  // call runs one authenticated RPC, renewing the token once if Parley refuses it.
  private async call<T>(rpc: (headers: Headers) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        const headers = new Headers({ Authorization: `Bearer ${await this.bearer(attempt > 0)}` });
        return await rpc(headers);
      } catch (e) {
        const pe = ParleyError.from(e);
        if (pe.code !== Code.Unauthenticated || !this.apiKey || attempt > 0) throw pe;
        this.logger.warn(`parley: agent token refused (${pe.rawMessage}), renewing`);
      }
    }
  }

  async exchangeAgentKey(apiKey: string): Promise<{ accessToken: string; expiresAt: Date }> {
    try {
      const r = await this.auth.exchangeAgentKey({ apiKey });
      return { accessToken: r.accessToken, expiresAt: r.expiresAt ? timestampDate(r.expiresAt) : new Date() };
    } catch (e) {
      throw ParleyError.from(e);
    }
  }

  /**
   * Files a session report (voice.sessionReportToJSON's object, or its JSON)
   * on call callId. Parley stores it on the call and merges its chat history
   * into the call's conversation by item id, so items appended live are not
   * stored twice; the same report again merges nothing.
   */
  async reportSession(
    callId: string,
    report: Record<string, unknown> | string,
    opts: {
      /** This call's deadline, instead of the client's. */
      timeoutMs?: number;
    } = {},
  ): Promise<ReportSessionResult> {
    const reportJson = typeof report === 'string' ? report : JSON.stringify(report);
    const r = await this.call((headers) =>
      this.calls.reportSession({ callId, reportJson }, { headers, timeoutMs: opts.timeoutMs }),
    );
    return {
      callId: r.call?.id ?? callId,
      reportedAt: r.call?.reportedAt ? timestampDate(r.call.reportedAt) : undefined,
      itemsMerged: r.itemsMerged,
      itemsReplayed: r.itemsReplayed,
      itemsConflicting: r.itemsConflicting,
    };
  }

  /** Appends @livekit/agents items (or their to_dict() dicts) by id, exactly once. */
  async appendItems(
    conversationId: string,
    items: llm.ChatItem[] | ItemDict[],
    opts: { agent?: string; messageId?: string } = {},
  ): Promise<{ items: Item[]; replayed: boolean }> {
    const dicts = items.map((i) => (typeof (i as llm.ChatItem).createdAt === 'number' ? toDict(i as llm.ChatItem) : (i as ItemDict)));
    const itemsJson = JSON.stringify({ items: dicts });
    const r = await this.call((headers) =>
      this.conversations.appendItems(
        { conversationId, itemsJson, agent: opts.agent ?? '', messageId: opts.messageId ?? '' },
        { headers },
      ),
    );
    return { items: r.items, replayed: r.replayed };
  }

  async getChatContext(
    conversationId: string,
    opts: {
      maxItems?: number;
      maxBytes?: bigint;
      afterSeq?: bigint;
      untilSeq?: bigint;
      excludeInstructions?: boolean;
      /** This call's deadline, instead of the client's. */
      timeoutMs?: number;
    } = {},
  ): Promise<ChatContextResult> {
    const r = await this.call((headers) =>
      this.conversations.getChatContext(
        {
          conversationId,
          maxItems: opts.maxItems ?? 0,
          maxBytes: opts.maxBytes ?? 0n,
          afterSeq: opts.afterSeq ?? 0n,
          untilSeq: opts.untilSeq ?? 0n,
          excludeInstructions: opts.excludeInstructions ?? false,
        },
        { headers, timeoutMs: opts.timeoutMs },
      ),
    );
    return new ChatContextResult(r.chatContextJson, r.firstSeq, r.lastSeq, r.truncated);
  }

  async listItems(
    conversationId: string,
    opts: { pageSize?: number; pageToken?: string; oldestFirst?: boolean; agent?: string } = {},
  ): Promise<{ items: Item[]; nextPageToken: string }> {
    const r = await this.call((headers) =>
      this.conversations.listItems(
        {
          conversationId,
          pageSize: opts.pageSize ?? 0,
          pageToken: opts.pageToken ?? '',
          order: opts.oldestFirst ? Order.OLDEST_FIRST : Order.UNSPECIFIED,
          agent: opts.agent ?? '',
        },
        { headers },
      ),
    );
    return { items: r.items, nextPageToken: r.nextPageToken };
  }

  /** Every item of the conversation, oldest first. */
  async allItems(conversationId: string): Promise<Item[]> {
    const out: Item[] = [];
    let pageToken = '';
    do {
      const page = await this.listItems(conversationId, { pageSize: 200, pageToken, oldestFirst: true });
      out.push(...page.items);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  }
}

