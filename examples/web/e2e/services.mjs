// PostgreSQL and Valkey for the browser test: the machine's servers on
// their usual loopback ports when they answer, else private ones started
// from the local binaries (as internal/testenv does for the Go tests), so
// the test never depends on a service somebody forgot to start.
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chown, mkdtemp, rm } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import pg from "pg";

const machinePostgres = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
const machineValkey = "redis://127.0.0.1:6379/0";

/** postgresAdminURL returns a URL allowed to create databases: wanted if set, the machine's, or a private server's. */
export async function postgresAdminURL(wanted, defer, log) {
  if (wanted) return wanted;
  if (await postgresAnswers(machinePostgres)) return machinePostgres;
  log("no PostgreSQL on 127.0.0.1:5432; starting a private one");
  return startPrivatePostgres(defer);
}

/** valkeyURL returns wanted if set, the machine's Valkey/Redis, or a private server's. */
export async function valkeyURL(wanted, defer, log) {
  if (wanted) return wanted;
  if (await tcpAnswers(6379)) return machineValkey;
  log("no Valkey on 127.0.0.1:6379; starting a private one");
  const bin = ["valkey-server", "redis-server"].map(onPath).find(Boolean);
  if (!bin) throw new Error("neither valkey-server nor redis-server is on PATH");
  const port = await freePort();
  const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  defer("private valkey", () => stop(child, "SIGTERM"));
  await waitFor(() => tcpAnswers(port), 10_000, "private valkey");
  return `redis://127.0.0.1:${port}/0`;
}

async function startPrivatePostgres(defer) {
  const bin = postgresBinDir();
  // initdb and postgres refuse to run as root.
  const owner = process.geteuid?.() === 0 ? systemUser("postgres") : {};
  const dir = await mkdtemp(join(tmpdir(), "parley-e2e-pg-"));
  defer("private postgres dir", () => rm(dir, { recursive: true, force: true }));
  if (owner.uid !== undefined) await chown(dir, owner.uid, owner.gid);
  const data = join(dir, "data");
  await run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], owner);
  const port = await freePort();
  const child = spawn(
    join(bin, "postgres"),
    ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
    { ...owner, stdio: "ignore" },
  );
  // SIGINT is PostgreSQL's fast shutdown: it disconnects clients and stops.
  defer("private postgres", () => stop(child, "SIGINT"));
  const url = `postgres://postgres@127.0.0.1:${port}/postgres?sslmode=disable`;
  await waitFor(() => postgresAnswers(url), 30_000, "private postgres");
  return url;
}

async function postgresAnswers(url) {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await c.connect();
    await c.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await c.end().catch(() => {});
  }
}

function tcpAnswers(port) {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port, timeout: 1_000 });
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
    s.once("timeout", () => (s.destroy(), resolve(false)));
  });
}

/** freePort returns a loopback port nobody listens on right now. */
export async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

async function waitFor(ok, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`${what} not ready within ${ms / 1000}s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stop(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => (clearTimeout(t), resolve()));
    child.kill(signal);
  });
}

function run(bin, args, opts) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { ...opts, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${bin} exited ${code}: ${stderr}`))));
  });
}

function onPath(name) {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

// postgresBinDir finds initdb and postgres of one installation: PATH first,
// then the newest /usr/lib/postgresql/*/bin.
function postgresBinDir() {
  const initdb = onPath("initdb");
  if (initdb && existsSync(join(initdb, "../postgres"))) return join(initdb, "..");
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => b - a) : [];
  for (const v of versions) {
    const bin = join(root, v, "bin");
    if (existsSync(join(bin, "initdb")) && existsSync(join(bin, "postgres"))) return bin;
  }
  throw new Error("initdb and postgres not found on PATH or in /usr/lib/postgresql/*/bin");
}

function systemUser(name) {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`running as root, PostgreSQL must run as the '${name}' system user, which does not exist`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}
