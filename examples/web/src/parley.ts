// The Parley clients and the signed-in session: one Connect transport for the
// public AuthService calls and one that adds the access token, refreshing it
// shortly before it expires.
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import { AuthService } from "./gen/parley/v1/auth_pb";
import { ConversationService } from "./gen/parley/v1/conversation_pb";
import { RoomService } from "./gen/parley/v1/room_pb";
import { TokenPairSchema, UserSchema, type TokenPair, type User } from "./gen/parley/v1/types_pb";

// A token this close to its expiry is refreshed first, so a call never
// races the clock (and a WatchMessages stream opened with it lives longer).
const refreshMarginMs = 60_000;
const storageKey = "parley.session";

/** baseUrl is Parley's address: ?parley=URL, else VITE_PARLEY_URL, else localhost:8080. */
export function baseUrl(): string {
  const fromQuery = new URLSearchParams(location.search).get("parley");
  const url = fromQuery || import.meta.env.VITE_PARLEY_URL || "http://localhost:8080";
  return url.replace(/\/+$/, "");
}

/** Session holds the signed-in user and its tokens (kept in sessionStorage, so a reload keeps the tab signed in). */
export class Session {
  user?: User;
  private tokens?: TokenPair;
  private refreshing?: Promise<void>;
  private readonly auth: Client<typeof AuthService>;

  constructor(
    auth: Client<typeof AuthService>,
    private readonly onSignedOut: () => void,
  ) {
    this.auth = auth;
    this.load();
  }

  get signedIn(): boolean {
    return this.tokens !== undefined;
  }

  async register(email: string, password: string, displayName: string): Promise<void> {
    const res = await this.auth.register({ email, password, displayName });
    this.set(res.user, res.tokens);
  }

  async login(email: string, password: string): Promise<void> {
    const res = await this.auth.login({ email, password });
    this.set(res.user, res.tokens);
  }

  async logout(): Promise<void> {
    const token = this.tokens;
    if (token) {
      // Best effort: the local session ends whatever the server says.
      await this.auth
        .logout({ refreshToken: token.refreshToken }, { headers: { Authorization: `Bearer ${token.accessToken}` } })
        .catch(() => undefined);
    }
    this.clear();
  }

  /** accessToken returns a token valid for at least refreshMarginMs, refreshing it once for concurrent callers. */
  async accessToken(): Promise<string | undefined> {
    if (this.tokens && this.expiresSoon(this.tokens)) {
      this.refreshing ??= this.refresh().finally(() => (this.refreshing = undefined));
      await this.refreshing;
    }
    return this.tokens?.accessToken;
  }

  private expiresSoon(t: TokenPair): boolean {
    return !t.accessExpiresAt || timestampDate(t.accessExpiresAt).getTime() - Date.now() < refreshMarginMs;
  }

  private async refresh(): Promise<void> {
    const old = this.tokens;
    if (!old) return;
    try {
      const res = await this.auth.refresh({ refreshToken: old.refreshToken });
      this.set(this.user, res.tokens);
    } catch (err) {
      // A spent or revoked refresh token cannot be retried: sign in again.
      this.clear();
      throw err;
    }
  }

  private set(user: User | undefined, tokens: TokenPair | undefined): void {
    if (!tokens) throw new Error("Parley answered without tokens");
    this.user = user;
    this.tokens = tokens;
    sessionStorage.setItem(
      storageKey,
      JSON.stringify({
        user: user ? toJsonString(UserSchema, user) : undefined,
        tokens: toJsonString(TokenPairSchema, tokens),
      }),
    );
  }

  private load(): void {
    const raw = sessionStorage.getItem(storageKey);
    if (!raw) return;
    try {
      const saved = JSON.parse(raw) as { user?: string; tokens: string };
      this.tokens = fromJsonString(TokenPairSchema, saved.tokens);
      this.user = saved.user ? fromJsonString(UserSchema, saved.user) : create(UserSchema);
    } catch {
      sessionStorage.removeItem(storageKey);
    }
  }

  private clear(): void {
    const wasSignedIn = this.signedIn;
    this.tokens = undefined;
    this.user = undefined;
    sessionStorage.removeItem(storageKey);
    if (wasSignedIn) this.onSignedOut();
  }
}

/** Parley bundles the typed clients of one Parley server. */
export interface Parley {
  url: string;
  session: Session;
  rooms: Client<typeof RoomService>;
  conversations: Client<typeof ConversationService>;
}

export function connect(url: string, onSignedOut: () => void): Parley {
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: url }));
  const session = new Session(auth, onSignedOut);
  const bearer: Interceptor = (next) => async (req) => {
    const token = await session.accessToken();
    if (token) req.header.set("Authorization", `Bearer ${token}`);
    return next(req);
  };
  // The Connect protocol with JSON: readable in the browser's network tab;
  // WatchMessages streams over plain fetch, no gRPC-Web proxy needed.
  const transport = createConnectTransport({ baseUrl: url, interceptors: [bearer] });
  return {
    url,
    session,
    rooms: createClient(RoomService, transport),
    conversations: createClient(ConversationService, transport),
  };
}
