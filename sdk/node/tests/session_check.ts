// A real @livekit/agents AgentSession, text only, persisted to a live Parley.
//
// Driven by cmd/parley's TestLiveKitAgentsNodeSession. Environment:
// PARLEY_URL, PARLEY_AGENT_KEY (from `parley agent-key create`),
// CONVERSATION_ID, and KINDS_CONVERSATION_ID (an empty one for the codec's
// round trip of every kind). Protocol on stdout/stdin, one line each: this
// script prints "KILL" when the Go side should stop Parley, goes on talking
// while Parley is away, and waits for "RESTARTED"; it prints "DISPATCH" and
// reads the job metadata of a room resuming the conversation, for the
// second session; at the end it prints "STOP" and waits for "STOPPED",
// Parley gone for good. Its last line is "RESULT <json>": the sessions'
// item ids in history order. Exits non-zero, saying why, on the first
// failed check.

import * as readline from 'node:readline';

import { initializeLogger, llm, voice } from '@livekit/agents';
import { ParleyClient, ParleyError, chatItemId, parseDispatchMetadata, persistSession, toDict, type Logger } from '../src';
import { ScriptedLLM, newAgent } from './scripted';

function fail(msg: string): never {
  console.log(`FAIL: ${msg}`);
  process.exit(1);
}

/** Keeps the package's "items wait" lines, and counts its agent tokens. */
class WaitLog implements Logger {
  lines: string[] = [];
  tokens = 0;
  refused = 0;
  private note(msg: string) {
    if (msg.includes('wait') || msg.includes('unsent')) this.lines.push(msg);
    if (msg.includes('token issued')) this.tokens++;
    if (msg.includes('token refused')) this.refused++;
    process.stderr.write(msg + '\n');
  }
  info = (m: string) => this.note(m);
  warn = (m: string) => this.note(m);
  error = (m: string) => this.note(m);
}

const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function readLine(): Promise<string> {
  const got = await lines.next();
  return got.done ? '' : got.value.trim();
}
async function expectLine(want: string) {
  const got = await readLine();
  if (got !== want) fail(`expected ${want}, read ${JSON.stringify(got)}`);
}

class JobCtx {
  shutdown: Array<() => Promise<void>> = [];
  constructor(readonly job: { metadata: string; agentName: string }) {}
  addShutdownCallback(cb: () => Promise<void>) {
    this.shutdown.push(cb);
  }
  async runShutdown() {
    for (const cb of this.shutdown) await cb();
  }
}

const turn = async (session: voice.AgentSession, text: string) => {
  await session.run({ userInput: text }).wait();
};
const dicts = (items: llm.ChatItem[]) => items.map(toDict);
// JSON with sorted keys: Parley's from_dict JSON orders keys its own way.
const canonical = (v: unknown): string =>
  JSON.stringify(v, (_, x) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x,
  );

async function main() {
  initializeLogger({ pretty: false, level: 'warn' });
  const waits = new WaitLog();
  const url = process.env.PARLEY_URL!;
  const key = process.env.PARLEY_AGENT_KEY!;
  const conv = process.env.CONVERSATION_ID!;
  const client = new ParleyClient(url, { apiKey: key, timeoutMs: 2_000, logger: waits });
  // The job's dispatch metadata, as internal/room writes it.
  const metadata = JSON.stringify({ conversation_id: conv });
  if (parseDispatchMetadata(metadata).conversationId !== conv) fail('dispatch metadata did not parse');

  // Session 1: two turns, Parley stopped, two more, Parley back, one more.
  const agent = newAgent();
  const session = new voice.AgentSession({ llm: new ScriptedLLM() });
  const job = new JobCtx({ metadata, agentName: 'node-agent' });
  const rec = await persistSession(session, agent, client, { jobCtx: job });
  await session.start({ agent });
  await turn(session, 'Hello there');
  await turn(session, 'What is the weather in Paris?');
  console.log('KILL');
  // Until Parley is really gone: the next items must find it away.
  for (;;) {
    try {
      await client.listItems(conv, { pageSize: 1 });
      await new Promise((r) => setTimeout(r, 100));
    } catch {
      break;
    }
  }
  await turn(session, 'Still there?');
  await turn(session, 'And the weather again?');
  await new Promise((r) => setTimeout(r, 1_500));
  if (rec.pending === 0 && waits.lines.length === 0) fail('Parley was away but no items waited');
  const waiting = rec.pending;
  await expectLine('RESTARTED');
  await turn(session, 'Goodbye');
  await session.close();
  await job.runShutdown();
  const history = [...session.history.items];

  // Parley has the history, in order, each id once.
  const stored = await client.allItems(conv);
  const gotIds = stored.map((i) => chatItemId(i.item));
  const wantIds = history.map((i) => i.id);
  if (JSON.stringify(gotIds) !== JSON.stringify(wantIds)) fail(`Parley's items ${gotIds}\n  session history ${wantIds}`);
  if (stored.some((it, i) => it.seq !== BigInt(i + 1))) fail(`seqs ${stored.map((i) => i.seq)}`);
  if (stored.some((i) => i.agent !== 'node-agent')) fail(`agents ${stored.map((i) => i.agent)}`);
  if (rec.dropped !== 0) fail(`${rec.dropped} items refused`);
  const kinds = new Set(history.map((i) => i.type));
  for (const k of ['message', 'function_call', 'function_call_output', 'agent_handoff', 'agent_config_update']) {
    if (!kinds.has(k as llm.ChatItem['type'])) fail(`history kinds ${[...kinds]}, no ${k}`);
  }

  // Session 2, same conversation, in a room that resumes it: its job
  // metadata is what Parley's CreateRoom dispatched; it starts from the
  // same chat context.
  console.log('DISPATCH');
  const dispatched = await readLine();
  const md = parseDispatchMetadata(dispatched);
  if (md.conversationId !== conv || md.lastSeq !== wantIds.length) {
    fail(`dispatch metadata ${JSON.stringify(dispatched)}: want conversation ${conv}, last_seq ${wantIds.length}`);
  }
  const agent2 = newAgent();
  const session2 = new voice.AgentSession({ llm: new ScriptedLLM() });
  const job2 = new JobCtx({ metadata: dispatched, agentName: 'node-agent' });
  const restored = (await client.getChatContext(conv)).chatContext();
  // The dispatch names the room's call, but this stand-in job context makes
  // no session report: report_check.ts files real ones.
  const rec2 = await persistSession(session2, agent2, client, { jobCtx: job2, fileReport: false });
  const a = dicts(history);
  const b = dicts(restored.items);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (canonical(a[i]) !== canonical(b[i])) fail(`restored item ${i} differs:\n  session 1 ${canonical(a[i])}\n  restored  ${canonical(b[i])}`);
  }
  // The restored items are the framework's own classes, as the session made them.
  for (const [i, it] of restored.items.entries()) {
    const orig = history[i]!;
    if (it.constructor !== orig.constructor) fail(`restored item ${it.id} is a ${it.constructor.name}, was a ${orig.constructor.name}`);
    if (it.createdAt !== orig.createdAt) fail(`restored item ${it.id} created at ${it.createdAt}, was ${orig.createdAt}`);
  }
  const agent2Ids = agent2.chatCtx.items.map((i) => i.id);
  if (JSON.stringify(agent2Ids) !== JSON.stringify(wantIds)) fail(`agent 2 starts with ${agent2Ids}, want ${wantIds}`);
  await session2.start({ agent: agent2 });
  await turn(session2, 'I am back');
  await session2.close();
  await job2.runShutdown();
  const after = (await client.allItems(conv)).map((i) => chatItemId(i.item));
  const newIds = session2.history.items.map((i) => i.id).filter((id) => !wantIds.includes(id));
  if (JSON.stringify(after) !== JSON.stringify([...wantIds, ...newIds])) fail(`after session 2: ${after}, want ${[...wantIds, ...newIds]}`);
  for (const id of newIds) if (!rec2.storedIds.has(id)) fail(`session 2's recorder lost track of ${id}`);

  // The client's exactly-once answers: the same item again is a replay,
  // its id with other content already_exists.
  const userMsg = history.find((i): i is llm.ChatMessage => i.type === 'message' && i.role === 'user')!;
  const again = await client.appendItems(conv, [userMsg], { agent: 'node-agent' });
  if (!again.replayed || chatItemId(again.items[0]?.item) !== userMsg.id) fail(`appending ${userMsg.id} again: replayed ${again.replayed}`);
  const changed = llm.ChatMessage.create({ id: userMsg.id, role: 'user', content: ['something else'], createdAt: userMsg.createdAt });
  try {
    await client.appendItems(conv, [changed], { agent: 'node-agent' });
    fail(`${userMsg.id} with other content was stored`);
  } catch (e) {
    if (!(e instanceof ParleyError) || e.codeName !== 'already_exists' || e.retryable) fail(`${userMsg.id} with other content: ${e}`);
  }

  // A room resumed at session 1's end: the dispatch metadata's last_seq
  // cuts the restore there, leaving session 2 out.
  const agent3 = newAgent();
  const resumed = new JobCtx({ metadata: JSON.stringify({ conversation_id: conv, last_seq: wantIds.length }), agentName: 'node-agent' });
  await persistSession(new voice.AgentSession({ llm: new ScriptedLLM() }), agent3, client, { jobCtx: resumed });
  const agent3Ids = agent3.chatCtx.items.map((i) => i.id);
  if (JSON.stringify(agent3Ids) !== JSON.stringify(wantIds)) fail(`resumed at last_seq ${wantIds.length}: ${agent3Ids}, want ${wantIds}`);

  // Every kind and field the framework's items carry survives
  // AppendItems and GetChatContext, through the package's codec both ways.
  const kindsConv = process.env.KINDS_CONVERSATION_ID!;
  const t = 1_733_097_600_000;
  const every: llm.ChatItem[] = [
    llm.ChatMessage.create({ id: 'k_sys', role: 'system', content: ['Be brief.'], createdAt: t }),
    llm.ChatMessage.create({
      id: 'k_user',
      role: 'user',
      createdAt: t + 1_000,
      content: ['Look:', llm.createImageContent({ id: 'img1', image: 'https://example.com/cat.png', inferenceDetail: 'high', mimeType: 'image/png' })],
      transcriptConfidence: 0.875,
      metrics: { startedSpeakingAt: 1733097600.25, stoppedSpeakingAt: 1733097600.75, transcriptionDelay: 0.125, endOfTurnDelay: 0.5 },
      extra: { source: 'test', n: 2 },
    }),
    llm.FunctionCall.create({ id: 'k_call', callId: 'c1', name: 'getWeather', args: '{"city":"Oslo"}', createdAt: t + 2_000, groupId: 'g1', thoughtSignature: 'sig' }),
    llm.FunctionCallOutput.create({ id: 'k_out', callId: 'c1', name: 'getWeather', output: 'service down', isError: true, createdAt: t + 3_000 }),
    llm.ChatMessage.create({
      id: 'k_asst',
      role: 'assistant',
      content: ['Sorry, the'],
      interrupted: true,
      createdAt: t + 4_000,
      metrics: { llmNodeTtft: 0.25, ttsNodeTtfb: 0.0625, e2eLatency: 0.75, providerRequestIds: ['req_1'] },
    }),
    llm.AgentHandoffItem.create({ id: 'k_handoff', oldAgentId: 'front', newAgentId: 'support', createdAt: t + 5_000 }),
    llm.AgentConfigUpdate.create({ id: 'k_cfg', instructions: 'Be kind.', toolsAdded: ['a'], toolsRemoved: ['getWeather'], createdAt: t + 6_000 }),
  ];
  await client.appendItems(kindsConv, every, { agent: 'node-agent' });
  const back = (await client.getChatContext(kindsConv)).chatContext().items;
  if (back.length !== every.length) fail(`every kind: ${back.length} items back of ${every.length}`);
  every.forEach((it, i) => {
    const got = back[i]!;
    if (canonical(toDict(got)) !== canonical(toDict(it)) || got.constructor !== it.constructor) {
      fail(`every kind, item ${it.id}:\n  sent ${canonical(toDict(it))}\n  back ${canonical(toDict(got))} (${got.constructor.name})`);
    }
  });

  // Parley gone for good: the restore gives up after its timeout and the
  // agent starts without history; the shutdown flush gives up at its
  // deadline and says how many items it leaves.
  console.log('STOP');
  await expectLine('STOPPED');
  const agent4 = newAgent();
  const session4 = new voice.AgentSession({ llm: new ScriptedLLM() });
  const job4 = new JobCtx({ metadata, agentName: 'node-agent' });
  let t0 = Date.now();
  await persistSession(session4, agent4, client, { jobCtx: job4, restoreTimeoutMs: 1_000, shutdownTimeoutMs: 1_000 });
  if (Date.now() - t0 > 3_000 || agent4.chatCtx.items.length > 0) {
    fail(`restore without Parley took ${Date.now() - t0} ms and gave ${agent4.chatCtx.items.length} items`);
  }
  await session4.start({ agent: agent4 });
  await turn(session4, 'Anyone?');
  await session4.close();
  t0 = Date.now();
  await job4.runShutdown();
  if (Date.now() - t0 > 3_000 || !waits.lines.some((m) => m.includes('unsent'))) {
    fail(`shutdown flush without Parley took ${Date.now() - t0} ms, log ${waits.lines.slice(-1)}`);
  }
  // The Go side gives agent tokens a few seconds of life: they were renewed
  // before they expired, so Parley never refused one.
  if (waits.tokens < 2 || waits.refused > 0) fail(`${waits.tokens} agent tokens issued, ${waits.refused} refused, in a session longer than several token lifetimes`);
  const counts: Record<string, number> = {};
  for (const i of history) counts[i.type] = (counts[i.type] ?? 0) + 1;
  console.log(`session 1: ${history.length} items ${JSON.stringify(counts)}; session 2: ${newIds.length}`);
  console.log(`waited: ${waiting} items; ${waits.tokens} agent tokens; log: ${waits.lines[0]}`);
  console.log('RESULT ' + JSON.stringify({ session1: wantIds, session2: newIds, waited: waiting }));
  process.exit(0);
}

main().catch((e) => fail(String(e?.stack ?? e)));
