// Fetches join credentials from Parley with livekit-client's own
// TokenSource.endpoint, as a LiveKit frontend does, and prints on stdout one
// JSON line per fetch: the credentials and the token's payload as
// livekit-client decodes it, or the error it threw.
//
//   node fetch.mjs URL ACCESS_TOKEN FETCH_OPTIONS_JSON...
//
// Each FETCH_OPTIONS_JSON is a TokenSourceFetchOptions object (roomName,
// participantName, agentName, agentMetadata...); "$ROOM" in one is replaced
// by the room name the previous fetch's token grants.
import { TokenSource, decodeTokenPayload } from 'livekit-client';

const [url, accessToken, ...fetches] = process.argv.slice(2);
const source = TokenSource.endpoint(url, { headers: { Authorization: `Bearer ${accessToken}` } });
let room = '';
for (const json of fetches) {
  const options = JSON.parse(json.replaceAll('$ROOM', room));
  try {
    const credentials = await source.fetch(options);
    const payload = decodeTokenPayload(credentials.participantToken);
    room = payload.video?.room ?? '';
    console.log(JSON.stringify({ credentials, payload }));
  } catch (err) {
    console.log(JSON.stringify({ error: String(err?.message ?? err) }));
  }
}
