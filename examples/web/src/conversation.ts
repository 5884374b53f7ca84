// ConversationView shows one conversation: its history a page at a time
// (ListMessages, newest first, with page tokens) and every new message live
// (WatchMessages, a Connect server stream resumed from the last seq seen).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import type { Conversation } from "./gen/parley/v1/types_pb";
import { Role, type Message } from "./gen/parley/v1/types_pb";
import type { Parley } from "./parley";

const pageSize = 20;
const minRetryMs = 500;
const maxRetryMs = 10_000;

export type WatchStatus = "connecting" | "live" | "reconnecting" | "closed";

export interface ConversationElements {
  root: HTMLElement;
  title: HTMLElement;
  id: HTMLElement;
  status: HTMLElement;
  heartbeat: HTMLElement;
  loadOlder: HTMLButtonElement;
  messages: HTMLOListElement;
  empty: HTMLElement;
}

export class ConversationView {
  private messages = new Map<bigint, Message>();
  private nextPageToken = "";
  private stop = new AbortController();
  private conversationId = "";

  constructor(
    private readonly parley: Parley,
    private readonly el: ConversationElements,
    private readonly onError: (err: unknown) => void,
  ) {
    el.loadOlder.addEventListener("click", () => void this.loadOlder().catch(onError));
  }

  /** open shows a conversation, replacing the one shown before. */
  async open(conversationId: string): Promise<void> {
    this.close();
    const stop = (this.stop = new AbortController());
    this.conversationId = conversationId;
    this.messages.clear();
    this.nextPageToken = "";
    this.render();
    this.el.root.hidden = false;
    this.el.id.textContent = conversationId;
    this.el.heartbeat.textContent = "none yet";

    const { conversation } = await this.parley.conversations.getConversation({ conversationId }, { signal: stop.signal });
    this.showTitle(conversation);
    const page = await this.parley.conversations.listMessages({ conversationId, pageSize }, { signal: stop.signal });
    this.add(page.messages);
    this.nextPageToken = page.nextPageToken;
    this.render();
    // Everything up to the newest message on the first page is shown; the
    // stream starts right after it, so nothing is missed or shown twice.
    void this.watch(conversationId, this.lastSeq(), stop.signal);
  }

  close(): void {
    this.stop.abort();
    this.setStatus("closed");
  }

  private async loadOlder(): Promise<void> {
    if (!this.nextPageToken) return;
    const conversationId = this.conversationId;
    const page = await this.parley.conversations.listMessages(
      { conversationId, pageSize, pageToken: this.nextPageToken },
      { signal: this.stop.signal },
    );
    if (conversationId !== this.conversationId) return;
    this.add(page.messages);
    this.nextPageToken = page.nextPageToken;
    this.render();
  }

  private async watch(conversationId: string, afterSeq: bigint, signal: AbortSignal): Promise<void> {
    let retry = minRetryMs;
    while (!signal.aborted) {
      this.setStatus("connecting");
      try {
        const stream = this.parley.conversations.watchMessages(
          { conversationId, afterSeq },
          { signal, onHeader: () => this.setStatus("live") },
        );
        for await (const res of stream) {
          retry = minRetryMs;
          this.setStatus("live");
          if (res.message) {
            this.add([res.message]);
            if (res.message.seq > afterSeq) afterSeq = res.message.seq;
            this.render(true);
          } else if (res.heartbeat) {
            // A response without a message only says the stream is alive.
            this.el.heartbeat.textContent = timestampDate(res.heartbeat).toLocaleTimeString();
          }
        }
        // The server ended the stream (its drain or the token's expiry):
        // resume from the last seq seen.
      } catch (err) {
        if (signal.aborted) return;
        const code = ConnectError.from(err).code;
        if (code === Code.NotFound || code === Code.InvalidArgument || code === Code.PermissionDenied) {
          this.setStatus("closed");
          this.onError(err);
          return;
        }
      }
      this.setStatus("reconnecting");
      await sleep(retry, signal);
      retry = Math.min(retry * 2, maxRetryMs);
    }
  }

  private add(messages: Message[]): void {
    for (const m of messages) this.messages.set(m.seq, m);
  }

  private lastSeq(): bigint {
    let last = 0n;
    for (const seq of this.messages.keys()) if (seq > last) last = seq;
    return last;
  }

  private showTitle(c: Conversation | undefined): void {
    this.el.title.textContent = c?.title || "Untitled conversation";
  }

  private setStatus(s: WatchStatus): void {
    this.el.status.textContent = s;
    this.el.status.dataset.status = s;
  }

  private render(live = false): void {
    const list = this.el.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const sorted = [...this.messages.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    list.replaceChildren(...sorted.map(messageItem));
    this.el.empty.hidden = sorted.length > 0;
    this.el.loadOlder.hidden = this.nextPageToken === "";
    if (live && atBottom) list.scrollTop = list.scrollHeight;
  }
}

function messageItem(m: Message): HTMLLIElement {
  const li = document.createElement("li");
  const role = roleName(m.role);
  li.className = `message ${role}`;
  li.dataset.testid = "message";
  li.dataset.seq = m.seq.toString();
  li.dataset.role = role;
  const meta = document.createElement("div");
  meta.className = "meta";
  const when = m.createdAt ? timestampDate(m.createdAt).toLocaleTimeString() : "";
  meta.textContent = `#${m.seq} · ${role} · ${when}${m.turnId ? ` · turn ${m.turnId}` : ""}`;
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = m.content;
  li.append(meta, body);
  return li;
}

function roleName(r: Role): string {
  switch (r) {
    case Role.USER:
      return "user";
    case Role.ASSISTANT:
      return "assistant";
    case Role.SYSTEM:
      return "system";
    default:
      return "unknown";
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}
