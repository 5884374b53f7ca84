// Package webhook is Parley's outbound webhooks: the endpoints customers
// register, their signing secrets and rotation, the events they subscribe
// to, and the delivery rules (at least once, in order per endpoint,
// retried with backoff for at least RetryWindow, then parked; an endpoint
// that answers 410 Gone is disabled until re-enabled). How a
// delivery looks on the wire (Standard Webhooks) and which addresses it
// may reach are the adapter's (internal/webhookhttp); the outbox and its
// leases are the store's.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/rule"
)

// The event types an endpoint may subscribe to.
const (
	CallStarted    = "call.started"
	CallEnded      = "call.ended"
	RecordingReady = "recording.ready"
	ReportReady    = "report.ready"
	ExportReady    = "export.ready"
	// ItemsAppended is batched and sent only to endpoints that name it.
	ItemsAppended = "conversation.items_appended"
)

// EventTypes lists every event type, in the order the API documents them.
func EventTypes() []string {
	return []string{CallStarted, CallEnded, RecordingReady, ReportReady, ExportReady, ItemsAppended}
}

var (
	// ErrNotFound is returned when an endpoint does not exist or is not the
	// caller's; the two are indistinguishable on purpose.
	ErrNotFound = errors.New("webhook endpoint not found")
	// ErrInvalid is returned (wrapped in an error naming the rule) for a
	// URL that is malformed or may not be delivered to, or an unknown or
	// missing event type.
	ErrInvalid = rule.ErrBroken
	// ErrTooManyEndpoints is returned by RegisterEndpoint for a user who
	// has MaxEndpoints already: each event fans out to every endpoint.
	ErrTooManyEndpoints = errors.New("too many webhook endpoints")
	// ErrBadSecret is returned by ParseSecret for text that is not whsec_
	// followed by the standard base64 of a 24 to 64 byte key.
	ErrBadSecret = errors.New("not a whsec_ secret of 24 to 64 bytes")
)

// Endpoint is a customer's receiver of events.
type Endpoint struct {
	ID     uuid.UUID
	UserID uuid.UUID
	URL    string
	// EventTypes are the types delivered to it, sorted, without repeats.
	EventTypes []string
	CreatedAt  time.Time
	// DisabledAt is when the endpoint was disabled (it answered 410 Gone);
	// zero while it is enabled. A disabled endpoint's events are recorded
	// and their deliveries parked, never attempted, until EnableEndpoint.
	DisabledAt time.Time
	// DisabledReason says why, while DisabledAt is set.
	DisabledReason string
}

// Subscribes reports whether e receives events of type t.
func (e Endpoint) Subscribes(t string) bool {
	for _, s := range e.EventTypes {
		if s == t {
			return true
		}
	}
	return false
}

// Standard Webhooks asks for keys of 24 to 64 bytes; Parley makes 32.
const (
	secretPrefix   = "whsec_"
	minSecretBytes = 24
	maxSecretBytes = 64
	newSecretBytes = 32
)

// Secret is an endpoint's signing key. Its String is redacted, so that a
// logged value never leaks it; Text is the form the customer is shown once
// and gives its verifier.
type Secret struct {
	key []byte
}

// NewSecret returns a fresh random secret.
func NewSecret() Secret {
	key := make([]byte, newSecretBytes)
	rand.Read(key) // never fails: crypto/rand aborts the process instead
	return Secret{key: key}
}

// SecretFromKey returns the secret with key (as a store keeps it).
func SecretFromKey(key []byte) (Secret, error) {
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return Secret{}, ErrBadSecret
	}
	return Secret{key: append([]byte(nil), key...)}, nil
}

// ParseSecret reads a secret in its Text form.
func ParseSecret(s string) (Secret, error) {
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, ErrBadSecret
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return Secret{}, ErrBadSecret
	}
	return SecretFromKey(key)
}

// Key is the secret's key, for signing and storing.
func (s Secret) Key() []byte { return s.key }

// Text is whsec_ and the base64 of the key.
func (s Secret) Text() string { return secretPrefix + base64.StdEncoding.EncodeToString(s.key) }

// String is redacted.
func (s Secret) String() string { return secretPrefix + "[redacted]" }

// Equal reports whether two secrets hold the same key.
func (s Secret) Equal(o Secret) bool { return hmac.Equal(s.key, o.key) }

// URLChecker refuses URLs deliveries may not go to (a scheme or address the
// operator does not allow). The adapter that delivers implements it; its
// answer at registration is advice, since DNS may change before delivery,
// where it is checked again.
type URLChecker interface {
	CheckURL(ctx context.Context, rawURL string) error
}
