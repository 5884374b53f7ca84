package webhookhttp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// tamper changes a delivery's body after it was signed.
type tamper struct{ next http.RoundTripper }

func (tr tamper) RoundTrip(r *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	body = bytes.Replace(body, []byte("call.ended"), []byte("call.edned"), 1)
	r = r.Clone(r.Context())
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	return tr.next.RoundTrip(r)
}

// Every delivery Parley signs is judged by the pinned reference library
// (tools/standardwebhooks) in a receiver of its own.
func TestReferenceLibraryVerifiesDeliveries(t *testing.T) {
	t.Parallel()
	receiver := testenv.WebhookReceiver(t)
	client := newClient(Policy{AllowHTTP: true, Allowed: loopbackOnly}, 10*time.Second, clientOptions{control: onlyLoopback(t)})
	tampering := newClient(Policy{AllowHTTP: true, Allowed: loopbackOnly}, 10*time.Second, clientOptions{control: onlyLoopback(t)})
	tampering.Transport = tamper{next: tampering.Transport}

	current, previous, other := webhook.NewSecret(), webhook.NewSecret(), webhook.NewSecret()
	body := []byte(`{"type":"call.ended","data":{"call_id":"0b6f7c1e","title":"Grüße, 世界 🎙"}}`)
	now := time.Now()
	tests := []struct {
		name       string
		client     *http.Client
		receiverAt webhook.Secret // the secret the receiver verifies with
		signWith   []webhook.Secret
		timestamp  time.Time
		error      string // empty: verified
	}{
		{name: "correct", client: client, receiverAt: current, signWith: []webhook.Secret{current}, timestamp: now},
		{name: "tampered body", client: tampering, receiverAt: current, signWith: []webhook.Secret{current}, timestamp: now, error: "No matching signature found"},
		{name: "wrong secret", client: client, receiverAt: other, signWith: []webhook.Secret{current}, timestamp: now, error: "No matching signature found"},
		{name: "stale timestamp", client: client, receiverAt: current, signWith: []webhook.Secret{current}, timestamp: now.Add(-10 * time.Minute), error: "Message timestamp too old"},
		{name: "future timestamp", client: client, receiverAt: current, signWith: []webhook.Secret{current}, timestamp: now.Add(10 * time.Minute), error: "Message timestamp too new"},
		{name: "rotation, receiver has the new secret", client: client, receiverAt: current, signWith: []webhook.Secret{current, previous}, timestamp: now},
		{name: "rotation, receiver still has the old secret", client: client, receiverAt: previous, signWith: []webhook.Secret{current, previous}, timestamp: now},
		{name: "rotation, receiver has neither", client: client, receiverAt: other, signWith: []webhook.Secret{current, previous}, timestamp: now, error: "No matching signature found"},
		{name: "after rotation, old secret retired", client: client, receiverAt: previous, signWith: []webhook.Secret{current}, timestamp: now, error: "No matching signature found"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("msg_%d_%d", now.UnixNano(), i)
			res, err := NewSender(tt.client).Send(t.Context(), webhook.Attempt{
				URL:       receiver + "/hooks?secret=" + url.QueryEscape(tt.receiverAt.Text()),
				ID:        id,
				Timestamp: tt.timestamp,
				Body:      body,
				Secrets:   tt.signWith,
			})
			if err != nil {
				t.Fatal(err)
			}
			var answer struct {
				Verified bool            `json:"verified"`
				ID       string          `json:"id"`
				Payload  json.RawMessage `json:"payload"`
				Error    string          `json:"error"`
			}
			if err := json.Unmarshal(res.Body, &answer); err != nil {
				t.Fatalf("receiver answered %d %q: %v", res.Status, res.Body, err)
			}
			if tt.error != "" {
				if res.Status != http.StatusUnauthorized || answer.Verified || answer.Error != tt.error {
					t.Fatalf("receiver answered %d %s, want 401 with %q", res.Status, res.Body, tt.error)
				}
				return
			}
			if res.Status != http.StatusOK || !answer.Verified || answer.ID != id {
				t.Fatalf("receiver answered %d %s, want 200, verified, id %s", res.Status, res.Body, id)
			}
			var sent, got any
			if err := json.Unmarshal(body, &sent); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(answer.Payload, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sent, got); diff != "" {
				t.Fatalf("receiver verified another payload (-sent +verified):\n%s", diff)
			}
		})
	}
}
