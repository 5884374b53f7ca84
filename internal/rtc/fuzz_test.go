package rtc_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
)

func fuzzClient(f testing.TB) *rtc.Client {
	c, err := rtc.New(rtc.Config{URL: "http://unused", APIKey: testKey, APISecret: testSecret})
	if err != nil {
		f.Fatal(err)
	}
	return c
}

// signWebhook is the Authorization LiveKit's notifier sends with body.
func signWebhook(t testing.TB, body []byte) string {
	sum := sha256.Sum256(body)
	tok, err := auth.NewAccessToken(testKey, testSecret).SetValidFor(5 * time.Minute).
		SetSha256(base64.StdEncoding.EncodeToString(sum[:])).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func webhookRequest(t testing.TB, body []byte, authorization string) *http.Request {
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://parley/livekit/webhook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	r.Header.Set("Content-Type", "application/webhook+json")
	return r
}

var webhookSeeds = []string{
	`{"event":"room_finished","id":"EV_1","createdAt":"1900000000","room":{"name":"parley-1","sid":"RM_1"}}`,
	`{"event":"participant_joined","id":"EV_2","room":{"name":"parley-1"},"participant":{"sid":"PA_1","identity":"u1","name":"Ada"}}`,
	`{"event":"egress_ended","id":"EV_3","egressInfo":{"egressId":"EG_1","roomName":"parley-1","status":"EGRESS_COMPLETE",` +
		`"fileResults":[{"filename":"recordings/parley-1/EG_1.mp4","location":"https://a/c/x","size":"42"},{"filename":""}]}}`,
	`{"event":"egress_ended","egressInfo":{"status":"EGRESS_FAILED","fileResults":[{"filename":"../../x.ogg"}]}}`,
	`{"event":"participant_connection_aborted","unknown":{"nested":[1,2]},"createdAt":-5}`,
	`{"event":"room_started","createdAt":"9223372036854775807"}`,
	`{}`, ``, `not json`, `{"event":"room_finished"`,
}

// FuzzWebhookBody verifies any body correctly signed: Verify never panics,
// refuses exactly the bodies LiveKit's own decoding refuses (as
// ErrInvalidWebhook), and reduces the others to the event they describe.
func FuzzWebhookBody(f *testing.F) {
	c := fuzzClient(f)
	for _, s := range webhookSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := c.Verify(webhookRequest(t, body, signWebhook(t, body)))
		var ev livekit.WebhookEvent
		oracle := protojson.UnmarshalOptions{DiscardUnknown: true, AllowPartial: true}.Unmarshal(body, &ev)
		if (err == nil) != (oracle == nil) {
			t.Fatalf("Verify(%q) = %v; protojson: %v", body, err, oracle)
		}
		if err != nil {
			if !errors.Is(err, room.ErrInvalidWebhook) {
				t.Fatalf("Verify(%q) = %v, want ErrInvalidWebhook", body, err)
			}
			return
		}
		if got.ID != ev.GetId() {
			t.Fatalf("Verify(%q): id %q, want %q", body, got.ID, ev.GetId())
		}
		wantRoom := ev.GetRoom().GetName()
		if ev.GetEvent() == "egress_ended" && wantRoom == "" {
			wantRoom = ev.GetEgressInfo().GetRoomName()
		}
		if got.LiveKitRoom != wantRoom {
			t.Fatalf("Verify(%q): room %q, want %q", body, got.LiveKitRoom, wantRoom)
		}
		if ts := ev.GetCreatedAt(); ts > 0 && got.At.Unix() != ts || ts <= 0 && !got.At.IsZero() {
			t.Fatalf("Verify(%q): at %v, created %d", body, got.At, ts)
		}
		wantKind := map[string]room.EventKind{
			"room_started": room.EventRoomStarted, "room_finished": room.EventRoomFinished,
			"participant_joined": room.EventParticipantJoined, "participant_left": room.EventParticipantLeft,
			"participant_connection_aborted": room.EventParticipantLeft, "egress_ended": room.EventEgressEnded,
		}[ev.GetEvent()]
		if got.Kind != wantKind {
			t.Fatalf("Verify(%q): kind %v, want %v", body, got.Kind, wantKind)
		}
		if got.Kind != room.EventEgressEnded && len(got.Recordings) > 0 {
			t.Fatalf("Verify(%q): recordings on a %v event", body, got.Kind)
		}
		if s := ev.GetEgressInfo().GetStatus(); len(got.Recordings) > 0 && s != livekit.EgressStatus_EGRESS_COMPLETE && s != livekit.EgressStatus_EGRESS_LIMIT_REACHED {
			t.Fatalf("Verify(%q): recordings of an egress that ended %v", body, s)
		}
		for _, rec := range got.Recordings {
			if rec.BlobName == "" || rec.ContentType == "" || rec.EgressID != ev.GetEgressInfo().GetEgressId() {
				t.Fatalf("Verify(%q): recording %+v", body, rec)
			}
		}
	})
}

// FuzzWebhookSignature sends a body with a tampered or made-up
// Authorization, or with another body than the one signed. Only the body
// that was signed, with the header as LiveKit wrote it, is accepted.
func FuzzWebhookSignature(f *testing.F) {
	c := fuzzClient(f)
	now := time.Now()
	claims := func(key, sum string) jwt.MapClaims {
		return jwt.MapClaims{"iss": key, "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(), "sha256": sum}
	}
	body := []byte(webhookSeeds[0])
	sum := sha256.Sum256(body)
	b64 := base64.StdEncoding.EncodeToString(sum[:])
	made := func(method jwt.SigningMethod, key any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(method, c).SignedString(key)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	for _, h := range []string{
		made(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(testKey, b64)),
		made(jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret-not-it"), claims(testKey, b64)),
		made(jwt.SigningMethodHS256, []byte(testSecret), claims("APIother", b64)),
		made(jwt.SigningMethodHS384, []byte(testSecret), claims(testKey, "")),
		"Bearer x", "",
	} {
		f.Add(body, body, uint8(1), uint16(0), uint8(0), h)
	}
	for _, s := range []struct {
		mode   uint8
		pos    uint16
		cut    uint8
		insert string
	}{{0, 0, 0, ""}, {2, 0, 0, ""}, {0, 0x8000, 1, ""}, {0, 0x8000, 0, "="}, {0, 0x8000, 0, " "}, {0, 0, 0, "Bearer "}, {0, 20, 4, "AAAA"}} {
		f.Add(body, []byte(webhookSeeds[1]), s.mode, s.pos, s.cut, s.insert)
	}
	f.Fuzz(func(t *testing.T, signed, sent []byte, mode uint8, pos uint16, cut uint8, insert string) {
		issued := signWebhook(t, signed)
		header := insert
		if mode&1 == 0 {
			p := int(pos&0x7fff) % (len(issued) + 1)
			if pos&0x8000 != 0 { // from the end, where the signature is
				p = len(issued) - p
			}
			c := min(int(cut), len(issued)-p)
			header = issued[:p] + insert + issued[p+c:]
		}
		if mode&2 == 0 {
			sent = signed
		}
		_, err := c.Verify(webhookRequest(t, sent, header))
		if err != nil && !errors.Is(err, room.ErrInvalidWebhook) {
			t.Fatalf("Verify = %v, want ErrInvalidWebhook", err)
		}
		untampered := header == issued && bytes.Equal(sent, signed)
		if err == nil && !untampered {
			t.Fatalf("Verify accepted body %q (signed %q) with Authorization %q (issued %q)", sent, signed, header, issued)
		}
		if untampered && err != nil && (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(signed, &livekit.WebhookEvent{}) == nil {
			t.Fatalf("the signed webhook was refused: %v", err)
		}
	})
}

// TestVerifyWebhookRefusesOtherSpellings: LiveKit's parser skips CR and LF
// and ignores spare bits, so these verified (found by FuzzWebhookSignature).
func TestVerifyWebhookRefusesOtherSpellings(t *testing.T) {
	t.Parallel()
	c := newClient(t, rtc.Config{URL: "http://unused"})
	body := []byte(webhookSeeds[0])
	tok := signWebhook(t, body)
	if _, err := c.Verify(webhookRequest(t, body, tok)); err != nil {
		t.Fatalf("the signed webhook was refused: %v", err)
	}
	const digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	spare := tok[:len(tok)-1] + string(digits[strings.IndexByte(digits, tok[len(tok)-1])^1])
	dot := strings.IndexByte(tok, '.')
	for name, h := range map[string]string{
		"spare bits of the signature": spare,
		"trailing CR":                 tok + "\r",
		"LF inside":                   tok[:dot] + "\n" + tok[dot:],
	} {
		if _, err := c.Verify(webhookRequest(t, body, h)); !errors.Is(err, room.ErrInvalidWebhook) {
			t.Errorf("Verify(%s) = %v, want ErrInvalidWebhook", name, err)
		}
	}
}
