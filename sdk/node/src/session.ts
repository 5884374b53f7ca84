// Persist an @livekit/agents AgentSession to Parley and restore it from
// there, as sdk/python's parley_livekit does for livekit-agents.
//
// The session's event callbacks only turn items into dicts and put them on
// a bounded queue; one loop sends them in batches, in order, retrying with
// backoff while Parley is away. Items carry their LiveKit ids, which Parley
// stores exactly once, so a batch resent after a lost answer is a replay.
// At the end the session's report (@livekit/agents' SessionReport) is filed
// with ReportSession, whose merge adds only what the live appends missed.

import { llm, voice } from '@livekit/agents';

import { ParleyError, type Logger, type ParleyClient, type ReportSessionResult } from './client';
import { isRecorded, toDict, type ItemDict } from './agentsjson';

/** What Parley puts in the job's dispatch metadata (internal/room.DispatchMetadata). */
export interface DispatchMetadata {
  conversationId: string;
  /** The conversation's last item when the room resumed it: restore up to it; 0 is up to the newest. */
  lastSeq: number;
  agentMetadata: string;
  /** The room's id, which is its call's: ReportSession's call. "" in a dispatch made by a Parley older than the session report. */
  callId: string;
}

/** Parses the job's dispatch metadata JSON {"conversation_id","last_seq","agent_metadata","call_id"}. */
export function parseDispatchMetadata(metadata: string): DispatchMetadata {
  let d: unknown;
  try {
    d = metadata ? JSON.parse(metadata) : {};
  } catch (e) {
    throw new Error(`dispatch metadata is not JSON: ${(e as Error).message}`);
  }
  const o = (d ?? {}) as Record<string, unknown>;
  if (typeof o !== 'object' || Array.isArray(o) || !o.conversation_id) throw new Error('dispatch metadata has no conversation_id');
  return {
    conversationId: String(o.conversation_id),
    lastSeq: Number(o.last_seq ?? 0) || 0,
    agentMetadata: typeof o.agent_metadata === 'string' ? o.agent_metadata : '',
    callId: typeof o.call_id === 'string' ? o.call_id : '',
  };
}

interface Entry {
  id: string;
  item: ItemDict;
  size: number; // of its JSON, for the batch's byte bound
}

/** A session report: sessionReportToJSON's object or its JSON, or a function making one, called once the items are flushed. */
export type Report = Record<string, unknown> | string | (() => Record<string, unknown> | string);

export interface RecorderOptions {
  agent?: string;
  /** The call the session report is filed on (the dispatch metadata's call_id). */
  callId?: string;
  maxQueue?: number;
  batchSize?: number;
  batchBytes?: number;
  maxBackoffMs?: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Sends one AgentSession's items to one Parley conversation.
 *
 * Never blocks the voice pipeline: callbacks only enqueue. An item that
 * finds the queue full is not marked queued, so the next sweep of
 * session.history (and the final one at close) offers it again.
 */
export class SessionRecorder {
  readonly agent: string;
  readonly callId: string;
  /** ReportSession's answer to the report this recorder filed, if it did. */
  reportResult?: ReportSessionResult;
  private readonly log: Logger;
  private readonly queue: Entry[] = [];
  private readonly maxQueue: number;
  private readonly batchSize: number;
  private readonly batchBytes: number;
  private readonly maxBackoff: number;
  private readonly queued = new Set<string>(); // ids on the queue or stored
  private readonly stored = new Set<string>(); // ids Parley answered for
  private droppedItems = 0;
  private inflight = 0;
  private session?: voice.AgentSession;
  private loop?: Promise<void>;
  private wake?: () => void;
  private idle?: () => void;
  private closed = false;
  private stopped = false;

  constructor(
    readonly client: ParleyClient,
    readonly conversationId: string,
    opts: RecorderOptions = {},
  ) {
    this.agent = opts.agent ?? '';
    this.callId = opts.callId ?? '';
    this.log = client.logger;
    this.maxQueue = opts.maxQueue ?? 10_000;
    this.batchSize = opts.batchSize ?? 100;
    // Under Parley's request limit (16 MiB by default) with room to spare.
    this.batchBytes = opts.batchBytes ?? 4 << 20;
    this.maxBackoff = opts.maxBackoffMs ?? 5_000;
  }

  /** Items waiting to be sent, the batch being sent included. */
  get pending(): number {
    return this.queue.length + this.inflight;
  }

  /** The ids Parley has confirmed, restored ones included. */
  get storedIds(): Set<string> {
    return new Set(this.stored);
  }

  /** Items Parley refused for good (logged each), never retried. */
  get dropped(): number {
    return this.droppedItems;
  }

  /**
   * Loads the conversation into agent's chat context (call before session.start).
   *
   * While Parley is unreachable it retries for timeoutMs, then logs and
   * returns an empty context: a caller waits for its agent no longer than
   * that. Other errors (a wrong conversation id) throw.
   */
  async restore(
    agent: voice.Agent,
    opts: { untilSeq?: number; maxItems?: number; maxBytes?: number; timeoutMs?: number } = {},
  ): Promise<llm.ChatContext> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5_000);
    let backoff = 200;
    let got;
    for (;;) {
      try {
        got = await this.client.getChatContext(this.conversationId, {
          untilSeq: BigInt(opts.untilSeq ?? 0),
          maxItems: opts.maxItems ?? 0,
          maxBytes: BigInt(opts.maxBytes ?? 0),
          // One answer that hangs must not outlast the timeout either.
          timeoutMs: Math.max(deadline - Date.now(), 10),
        });
        break;
      } catch (e) {
        const pe = ParleyError.from(e);
        if (!pe.retryable) throw pe;
        if (Date.now() + backoff > deadline) {
          this.log.error(`parley: conversation ${this.conversationId} not restored, starting without its history: ${pe.message}`);
          return llm.ChatContext.empty();
        }
        await sleep(backoff);
        backoff = Math.min(backoff * 2, this.maxBackoff);
      }
    }
    const ctx = got.chatContext();
    // Restored items are Parley's already; never offer them again.
    for (const item of ctx.items) {
      this.queued.add(item.id);
      this.stored.add(item.id);
    }
    const merged = agent.chatCtx.copy();
    merged.items.push(...ctx.items);
    await agent.updateChatCtx(merged);
    this.log.info(
      `parley: restored ${ctx.items.length} items of conversation ${this.conversationId} (seq ${got.firstSeq}..${got.lastSeq}${got.truncated ? ', truncated' : ''})`,
    );
    return ctx;
  }

  /** Starts recording session: its events from now on, and its history. */
  attach(session: voice.AgentSession): void {
    this.session = session;
    session.on(voice.AgentSessionEventTypes.ConversationItemAdded, (ev) => {
      // The history first: items that fire no event of their own (config
      // updates, calls recorded when they started) keep their order.
      this.sweep();
      this.offer([ev.item]);
    });
    session.on(voice.AgentSessionEventTypes.FunctionToolsExecuted, (ev) => {
      // The event comes before the session adds the outputs to its history;
      // each call and then its output, in the order executed.
      this.sweep();
      const items: llm.ChatItem[] = [];
      for (const [call, out] of voice.zipFunctionCallsAndOutputs(ev)) {
        items.push(call);
        if (out) items.push(out);
      }
      this.offer(items);
    });
    session.on(voice.AgentSessionEventTypes.Close, () => this.sweep());
    this.loop ??= this.flushLoop();
  }

  private sweep(): void {
    if (this.session) this.offer(this.session.history.items);
  }

  private offer(items: llm.ChatItem[]): void {
    if (this.closed) return;
    for (const item of items) {
      if (this.queued.has(item.id) || !isRecorded(item)) continue;
      if (this.queue.length >= this.maxQueue) {
        this.log.warn(`parley: queue full (${this.queue.length} items wait); ${item.id} is offered again later`);
        return;
      }
      let d: ItemDict;
      try {
        d = toDict(item);
      } catch (e) {
        // A model's own item shape; never break the session for it.
        this.log.error(`parley: could not convert item ${item.id}: ${(e as Error).message}`);
        continue;
      }
      this.queue.push({ id: item.id, item: d, size: JSON.stringify(d).length });
      this.queued.add(item.id);
    }
    this.wake?.();
  }

  private async flushLoop(): Promise<void> {
    let backoff = 200;
    let lastLog = 0;
    while (!this.stopped) {
      if (this.queue.length === 0) {
        this.idle?.();
        await new Promise<void>((r) => (this.wake = r));
        this.wake = undefined;
        continue;
      }
      const batch: Entry[] = [];
      let size = 0;
      while (batch.length < this.batchSize && this.queue.length > 0) {
        const next = this.queue[0]!;
        if (batch.length > 0 && size + next.size > this.batchBytes) break; // the next batch's first
        batch.push(this.queue.shift()!);
        size += next.size;
      }
      this.inflight = batch.length;
      for (;;) {
        try {
          await this.send(batch);
          if (backoff > 200) this.log.info(`parley: reachable again, ${batch.length} items sent, ${this.queue.length} wait`);
          backoff = 200;
          break;
        } catch (e) {
          const pe = ParleyError.from(e);
          if (!pe.retryable) {
            await this.sendSingly(batch);
            break;
          }
          if (this.stopped) return;
          const now = Date.now();
          if (now - lastLog >= 5_000) {
            lastLog = now;
            this.log.warn(`parley: ${pe.message}; ${this.pending} items wait, retrying in ${(backoff / 1000).toFixed(1)}s`);
          }
          await sleep(pe.retryAfter !== undefined ? pe.retryAfter * 1000 : backoff * (0.5 + Math.random()));
          backoff = Math.min(backoff * 2, this.maxBackoff);
        }
      }
      this.inflight = 0;
    }
  }

  private async send(batch: Entry[]): Promise<void> {
    await this.client.appendItems(
      this.conversationId,
      batch.map((e) => e.item),
      { agent: this.agent },
    );
    for (const e of batch) this.stored.add(e.id);
  }

  // A batch Parley refused for good: keep every item it takes, drop and log the rest.
  private async sendSingly(batch: Entry[]): Promise<void> {
    for (const entry of batch) {
      let backoff = 200;
      for (;;) {
        try {
          await this.send([entry]);
          break;
        } catch (e) {
          const pe = ParleyError.from(e);
          if (pe.retryable && !this.stopped) {
            await sleep(pe.retryAfter !== undefined ? pe.retryAfter * 1000 : backoff);
            backoff = Math.min(backoff * 2, this.maxBackoff);
            continue;
          }
          this.droppedItems++;
          this.log.error(`parley: item ${entry.id} refused, not retried: ${pe.message}`);
          break;
        }
      }
    }
  }

  /**
   * Appends the final history and flushes, then files report; all within
   * timeoutMs. The report goes after the flush, so its merge finds the live
   * items stored and adds only those they missed. Items still unsent at the
   * deadline leave the report unfiled (logged): Parley was away.
   */
  async close(timeoutMs = 10_000, report?: Report): Promise<ReportSessionResult | undefined> {
    const deadline = Date.now() + timeoutMs;
    this.sweep();
    this.closed = true;
    let ok = true;
    if (this.loop) {
      const drained = new Promise<boolean>((r) => {
        if (this.pending === 0) return r(true);
        this.idle = () => r(true);
      });
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
      ok = await Promise.race([drained, late]);
      clearTimeout(timer);
      if (!ok) this.log.error(`parley: shutdown deadline passed with ${this.pending} items unsent`);
      this.stopped = true;
      this.wake?.();
    }
    if (report === undefined) return undefined;
    if (!ok) {
      this.log.error(`parley: session report of call ${this.callId} not filed: the shutdown deadline passed`);
      return undefined;
    }
    return this.fileReport(report, deadline - Date.now());
  }

  /**
   * Files a session report on the recorder's call, retrying for timeoutMs.
   * Returns ReportSession's answer (also kept as reportResult), or
   * undefined, logged, when there is no call id, the report cannot be made,
   * Parley refuses it, or the deadline passes.
   */
  async fileReport(report: Report, timeoutMs = 10_000): Promise<ReportSessionResult | undefined> {
    if (!this.callId) {
      this.log.warn('parley: no call id (the dispatch metadata has none); session report not filed');
      return undefined;
    }
    // From here, so making the report counts against timeoutMs too.
    const deadline = Date.now() + timeoutMs;
    let json: string;
    try {
      const r = typeof report === 'function' ? report() : report;
      json = typeof r === 'string' ? r : JSON.stringify(r);
    } catch (e) {
      // A session that cannot report must still shut down.
      this.log.error(`parley: could not make the session report of call ${this.callId}: ${(e as Error).message}`);
      return undefined;
    }
    let backoff = 200;
    for (;;) {
      try {
        // One answer that hangs must not outlast the deadline either.
        const got = await this.client.reportSession(this.callId, json, { timeoutMs: Math.max(deadline - Date.now(), 10) });
        this.reportResult = got;
        this.log.info(
          `parley: session report filed on call ${this.callId}: ${got.itemsMerged} items merged, ${got.itemsReplayed} already stored, ${got.itemsConflicting} conflicting`,
        );
        return got;
      } catch (e) {
        const pe = ParleyError.from(e);
        if (!pe.retryable) {
          this.log.error(`parley: session report of call ${this.callId} refused: ${pe.message}`);
          return undefined;
        }
        const wait = pe.retryAfter !== undefined ? pe.retryAfter * 1000 : backoff * (0.5 + Math.random());
        if (Date.now() + wait > deadline) {
          this.log.error(`parley: session report of call ${this.callId} not filed by the deadline: ${pe.message}`);
          return undefined;
        }
        await sleep(wait);
        backoff = Math.min(backoff * 2, this.maxBackoff);
      }
    }
  }
}

export interface PersistOptions {
  /**
   * The job context (JobContext): its dispatch metadata names the conversation and the call, and
   * the final flush, then the session report (makeSessionReport), become one of its shutdown callbacks.
   */
  jobCtx?: {
    job: { metadata: string; agentName: string };
    addShutdownCallback(cb: () => Promise<void>): void;
    makeSessionReport?(session?: voice.AgentSession): voice.SessionReport;
  };
  conversationId?: string;
  untilSeq?: number;
  agentName?: string;
  /** The call to file the session report on; by default the dispatch metadata's call_id. */
  callId?: string;
  /** false: file no session report at the job's end. */
  fileReport?: boolean;
  restoreTimeoutMs?: number;
  shutdownTimeoutMs?: number;
}

/**
 * Restores agent from Parley and records session there; call before session.start.
 *
 * The conversation comes from conversationId or the job's dispatch
 * metadata, whose last_seq bounds the restore. With a job context, the
 * final flush runs as one of its shutdown callbacks, and then, unless
 * fileReport is false, files the job's session report
 * (jobCtx.makeSessionReport(session), as voice.sessionReportToJSON writes
 * it) on the dispatch metadata's call_id, all within shutdownTimeoutMs.
 */
export async function persistSession(
  session: voice.AgentSession,
  agent: voice.Agent,
  client: ParleyClient,
  opts: PersistOptions = {},
): Promise<SessionRecorder> {
  let { conversationId, untilSeq, agentName, callId } = opts;
  const jobCtx = opts.jobCtx;
  if (conversationId === undefined) {
    if (!jobCtx) throw new Error('persistSession needs a conversationId or a jobCtx');
    const md = parseDispatchMetadata(jobCtx.job.metadata);
    conversationId = md.conversationId;
    untilSeq ??= md.lastSeq;
    callId ??= md.callId;
  }
  if (jobCtx) agentName ||= jobCtx.job.agentName;
  const rec = new SessionRecorder(client, conversationId, { agent: agentName ?? '', callId: callId ?? '' });
  const fileReport = opts.fileReport !== false && jobCtx !== undefined;
  if (fileReport && !rec.callId) client.logger.warn('parley: the dispatch metadata has no call_id; the session report will not be filed');
  await rec.restore(agent, { untilSeq: untilSeq ?? 0, timeoutMs: opts.restoreTimeoutMs ?? 5_000 });
  rec.attach(session);
  jobCtx?.addShutdownCallback(async () => {
    const report =
      fileReport && rec.callId
        ? () => {
            if (!jobCtx.makeSessionReport) throw new Error('the job context makes no session report');
            return voice.sessionReportToJSON(jobCtx.makeSessionReport(session));
          }
        : undefined;
    await rec.close(opts.shutdownTimeoutMs ?? 10_000, report);
  });
  return rec;
}
