// The example app's wiring: sign in, create a room, list conversations and
// open one. Plain DOM, no framework: the interesting part is the Parley calls.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";

import { ConversationView } from "./conversation";
import type { Conversation } from "./gen/parley/v1/types_pb";
import { RoomStatus } from "./gen/parley/v1/types_pb";
import { baseUrl, connect } from "./parley";
import "./style.css";

function $<T extends HTMLElement = HTMLElement>(selector: string): T {
  const el = document.querySelector<T>(selector);
  if (!el) throw new Error(`missing element ${selector}`);
  return el;
}

const errorBox = $("#error");
function showError(err: unknown): void {
  errorBox.textContent = ConnectError.from(err).message;
  errorBox.hidden = false;
}
function clearError(): void {
  errorBox.hidden = true;
}

const parley = connect(baseUrl(), () => render());
$("[data-testid=server]").textContent = parley.url;

const view = new ConversationView(
  parley,
  {
    root: $("#conversation"),
    title: $("[data-testid=conversation-title]"),
    id: $("[data-testid=conversation-id]"),
    status: $("[data-testid=watch-status]"),
    heartbeat: $("[data-testid=heartbeat]"),
    loadOlder: $<HTMLButtonElement>("#load-older"),
    messages: $<HTMLOListElement>("#messages"),
    empty: $("#no-messages"),
  },
  showError,
);

function render(): void {
  const signedIn = parley.session.signedIn;
  $("#signin").hidden = signedIn;
  $("#workspace").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  const user = parley.session.user;
  $("[data-testid=whoami]").textContent = signedIn ? `Signed in as ${user?.displayName || user?.email || "you"}` : "";
  if (signedIn) {
    void loadConversations(true).catch(showError);
  } else {
    view.close();
    $("#conversation").hidden = true;
  }
}

// Sign in.
$<HTMLFormElement>("#signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target as HTMLFormElement;
  const data = new FormData(form);
  const email = String(data.get("email"));
  const password = String(data.get("password"));
  const action = (ev.submitter as HTMLButtonElement | null)?.value;
  clearError();
  const signIn =
    action === "register"
      ? parley.session.register(email, password, String(data.get("displayName") ?? ""))
      : parley.session.login(email, password);
  signIn.then(render, showError);
});

$("#signout").addEventListener("click", () => {
  void parley.session.logout().then(render);
});

// Rooms: creating one also creates its conversation and answers with a
// LiveKit join token for the caller.
let roomConversationId = "";
$<HTMLFormElement>("#room-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target as HTMLFormElement;
  const name = String(new FormData(form).get("name"));
  clearError();
  parley.rooms.createRoom({ name }).then(({ room, join }) => {
    roomConversationId = room?.conversationId ?? "";
    $("[data-testid=room-name]").textContent = room?.name ?? "";
    $("[data-testid=room-status]").textContent = room?.status === RoomStatus.ACTIVE ? "active" : "ended";
    $<HTMLInputElement>("[data-testid=livekit-url]").value = join?.livekitUrl ?? "";
    $<HTMLTextAreaElement>("[data-testid=join-token]").value = join?.token ?? "";
    $("[data-testid=join-expires]").textContent = join?.expiresAt ? timestampDate(join.expiresAt).toLocaleString() : "";
    $("#room").hidden = false;
    form.reset();
    return loadConversations(true);
  }).catch(showError);
});

$("#open-room-conversation").addEventListener("click", () => {
  if (roomConversationId) openConversation(roomConversationId);
});

// Conversations: the caller's own, newest first, a page at a time.
let conversationsToken = "";
async function loadConversations(fromStart: boolean): Promise<void> {
  const res = await parley.conversations.listConversations({
    pageSize: 20,
    pageToken: fromStart ? "" : conversationsToken,
  });
  const list = $("#conversations");
  if (fromStart) list.replaceChildren();
  list.append(...res.conversations.map(conversationItem));
  conversationsToken = res.nextPageToken;
  $("#conversations-more").hidden = conversationsToken === "";
}

function conversationItem(c: Conversation): HTMLLIElement {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.dataset.testid = "conversation-item";
  button.dataset.id = c.id;
  button.textContent = c.title || "Untitled conversation";
  const meta = document.createElement("span");
  meta.className = "muted";
  const updated = c.updatedAt ? timestampDate(c.updatedAt).toLocaleString() : "";
  meta.textContent = ` ${c.messageCount} messages · ${updated}`;
  button.addEventListener("click", () => openConversation(c.id));
  li.append(button, meta);
  return li;
}

$("#conversations-refresh").addEventListener("click", () => void loadConversations(true).catch(showError));
$("#conversations-more").addEventListener("click", () => void loadConversations(false).catch(showError));

$<HTMLFormElement>("#conversation-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target as HTMLFormElement;
  const title = String(new FormData(form).get("title") ?? "");
  clearError();
  parley.conversations.createConversation({ title }).then(({ conversation }) => {
    form.reset();
    if (conversation) openConversation(conversation.id);
    return loadConversations(true);
  }).catch(showError);
});

function openConversation(id: string): void {
  clearError();
  void view.open(id).catch(showError);
}

render();
