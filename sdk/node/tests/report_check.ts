// Real @livekit/agents jobs whose session reports @parley/livekit files
// with Parley: sdk/python's tests/report_check.py for Node, same protocol.
//
// Driven by cmd/parley's TestLiveKitAgentsNodeReport. Environment:
// PARLEY_URL, PARLEY_AGENT_KEY, SCRIPT (the user turns, a JSON list) and
// CALLS, a JSON list of {"name", "dispatch", "livekit_room"}: for each, a
// JobContext whose job metadata is the dispatch CreateRoom made runs a
// text-only AgentSession (scripted LLM and tool) persisted by
// persistSession, then ends as the framework ends a job: the session
// closes and the job's shutdown callbacks run, in which the SDK flushes the
// items and files the job's own session report (makeSessionReport). In the
// call named "lossy" Parley's answers to the items of the weather turn are
// lost (an internal error, so the SDK gives them up): only the report has
// them. In "live" the first ReportSession is answered unavailable without
// reaching Parley, so the SDK must retry; "optout" files no report
// (fileReport: false). Before each call's first report this script prints
// "REPORT <name>" and waits for "GO". First, on an in-memory transport, a
// ReportSession that never answers must be given up at the deadline. Its
// last line is "RESULT <json>".

import * as readline from 'node:readline';

import { Code, createRouterTransport } from '@connectrpc/connect';
import { JobContext, JobProcess, initializeLogger, runWithJobContextAsync, voice, type llm } from '@livekit/agents';
import { Job, JobType, Room as RoomModel } from '@livekit/protocol';
import { Room } from '@livekit/rtc-node';

import { ParleyClient, ParleyError, SessionRecorder, persistSession, type ItemDict, type ReportSessionResult } from '../src';
import { CallService } from '../src/gen/parley/v1/call_pb';
import { ScriptedLLM, newAgent } from './scripted';

function fail(msg: string): never {
  console.log(`FAIL: ${msg}`);
  process.exit(1);
}

const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

/** Whether an item (its to_dict()) belongs to the script's weather turn. */
function weatherTurn(d: ItemDict): boolean {
  if (d.type === 'function_call' || d.type === 'function_call_output') return true;
  const content = Array.isArray(d.content) ? d.content : [];
  return d.type === 'message' && /weather/i.test(content.filter((c): c is string => typeof c === 'string').join(' '));
}

/** Parley's client, with the Go side's look before the first report and, when lossy, lost appends. */
class CheckClient extends ParleyClient {
  lost: string[] = [];
  attempts = 0;
  readonly lossy: boolean;
  readonly flaky: boolean;
  constructor(
    url: string,
    apiKey: string,
    readonly name: string,
  ) {
    super(url, { apiKey, logger: { info: (m) => process.stderr.write(m + '\n'), warn: (m) => process.stderr.write(m + '\n'), error: (m) => process.stderr.write(m + '\n') } });
    this.lossy = name === 'lossy';
    this.flaky = name === 'live';
  }
  override async appendItems(conversationId: string, items: llm.ChatItem[] | ItemDict[], opts: { agent?: string; messageId?: string } = {}) {
    const lost = (items as ItemDict[]).filter((d) => this.lossy && weatherTurn(d)).map((d) => String(d.id));
    if (lost.length) {
      for (const id of lost) if (!this.lost.includes(id)) this.lost.push(id);
      throw new ParleyError(Code.Internal, 'internal error'); // as Parley answers a bug; never sent
    }
    return super.appendItems(conversationId, items, opts);
  }
  override async reportSession(
    callId: string,
    report: Record<string, unknown> | string,
    opts: { timeoutMs?: number } = {},
  ): Promise<ReportSessionResult> {
    if (++this.attempts === 1) {
      console.log(`REPORT ${this.name}`);
      const got = await lines.next();
      if (got.done || got.value.trim() !== 'GO') fail(`expected GO, read ${JSON.stringify(got.value)}`);
      if (this.flaky) throw new ParleyError(Code.Unavailable, 'connection refused'); // as if Parley were away; never sent
    }
    return super.reportSession(callId, report, opts);
  }
}

const counts = (r: ReportSessionResult | undefined) =>
  r ? { merged: r.itemsMerged, replayed: r.itemsReplayed, conflicting: r.itemsConflicting } : null;

async function runCall(call: { name: string; dispatch: string; livekit_room: string }, script: string[]) {
  const client = new CheckClient(process.env.PARLEY_URL!, process.env.PARLEY_AGENT_KEY!, call.name);
  const optOut = call.name === 'optout';
  // A worker's job: dispatched to the call's room, with Parley's metadata.
  const info = {
    acceptArguments: { name: '', identity: 'node-agent', metadata: '' },
    job: new Job({
      id: `AJ_${call.name}`,
      type: JobType.JT_ROOM,
      room: new RoomModel({ name: call.livekit_room, sid: `RM_${call.name}` }),
      metadata: call.dispatch,
      agentName: 'node-agent',
    }),
    url: '',
    token: '',
    workerId: 'report-check',
    fakeJob: true,
  };
  const jobCtx = new JobContext(new JobProcess(), info, new Room(), () => {}, () => {}, {
    doInference: async () => {
      throw new Error('no inference in this check');
    },
  } as unknown as ConstructorParameters<typeof JobContext>[5]);
  return runWithJobContextAsync(jobCtx, async () => {
    const session = new voice.AgentSession({ llm: new ScriptedLLM() });
    const agent = newAgent();
    const rec = await persistSession(session, agent, client, { jobCtx, fileReport: !optOut });
    await session.start({ agent });
    for (const text of script) await session.run({ userInput: text }).wait();
    // The job's end as @livekit/agents runs it: the session closes, then
    // the shutdown callbacks run.
    await session.close();
    for (const cb of jobCtx.shutdownCallbacks) await cb();
    const history = session.history.items.map((i) => i.id);
    const first = counts(rec.reportResult);
    const attempts = client.attempts;
    if ((first === null) !== optOut) fail(`${call.name}: report filed ${JSON.stringify(first)}`);
    // The same report again, as a retry after a lost answer would send it.
    const again = optOut ? null : counts(await rec.fileReport(voice.sessionReportToJSON(jobCtx.makeSessionReport(session))));
    const kinds = new Set(session.history.items.map((i) => i.type));
    for (const k of ['message', 'function_call', 'function_call_output'] as const) if (!kinds.has(k)) fail(`history kinds ${[...kinds]}`);
    if (rec.dropped !== client.lost.length) fail(`${call.name}: ${client.lost.length} items lost live, the SDK gave up ${rec.dropped}`);
    return { history, lost: client.lost, attempts, report: first, again };
  });
}

/**
 * A ReportSession that never answers is given up at fileReport's deadline:
 * each attempt carries the time left as its own deadline, which the hung
 * handler sees (the router transport has no default one to fall back on).
 */
async function hungReport() {
  const budget = 500;
  const seen: Array<number | undefined> = [];
  let reached!: () => void;
  const first = new Promise<void>((r) => (reached = r));
  const transport = createRouterTransport(({ service }) =>
    service(CallService, {
      reportSession: (_req, ctx) => {
        seen.push(ctx.timeoutMs());
        reached();
        return new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
      },
    }),
  );
  const quiet = { info: () => {}, warn: () => {}, error: () => {} };
  const rec = new SessionRecorder(new ParleyClient('', { token: 't', transport, logger: quiet }), 'conv', { callId: 'call' });
  const filing = rec.fileReport('{}', budget);
  // Checked at the first attempt: one without a deadline would hang for good.
  await first;
  const bad = (ts: Array<number | undefined>) => ts.some((t) => t === undefined || t > budget);
  if (bad(seen)) fail(`hung report: attempt deadline ${seen[0]}, budget ${budget} ms`);
  const got = await filing;
  if (got !== undefined) fail(`hung report: filed ${JSON.stringify(got)}`);
  if (bad(seen)) fail(`hung report: attempt deadlines ${JSON.stringify(seen)}, budget ${budget} ms`);
}

async function main() {
  await hungReport();
  initializeLogger({ pretty: false, level: 'warn' });
  const script = JSON.parse(process.env.SCRIPT!) as string[];
  const calls = JSON.parse(process.env.CALLS!) as Array<{ name: string; dispatch: string; livekit_room: string }>;
  const result: Record<string, unknown> = {};
  for (const c of calls) result[c.name] = await runCall(c, script);
  if (calls.some((c) => c.name === 'lossy') && !(result.lossy as { lost: string[] }).lost.length) fail('the lossy call lost nothing');
  console.log('RESULT ' + JSON.stringify(result));
  process.exit(0);
}

main().catch((e) => fail(String(e?.stack ?? e)));
