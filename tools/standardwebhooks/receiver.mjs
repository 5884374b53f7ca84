// A webhook receiver for internal/webhookhttp's tests: it verifies every
// delivery with the pinned Standard Webhooks reference library and answers
// 200 with {"verified": true, "payload": ...} or 401 with the library's
// error. The secret comes in the query (?secret=whsec_...), so one receiver
// serves every case. It listens on 127.0.0.1 only and prints its port.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const secret = new URL(req.url, "http://receiver").searchParams.get("secret");
    const body = Buffer.concat(chunks).toString("utf8");
    let status = 200;
    let answer;
    try {
      const payload = new Webhook(secret).verify(body, req.headers);
      answer = { verified: true, id: req.headers["webhook-id"], payload };
    } catch (e) {
      status = 401;
      answer = { verified: false, error: String(e && e.message) };
    }
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
  });
});
server.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
