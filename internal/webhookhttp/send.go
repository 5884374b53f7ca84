package webhookhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/parley-dev/parley/internal/webhook"
)

// maxResponseBody is how much of a receiver's answer is kept: enough to
// show a customer why a delivery failed, never a whole page.
const maxResponseBody = 4 << 10

// Delivery is one attempt to deliver one message to one endpoint.
type Delivery struct {
	URL string
	// ID is the message's webhook-id: the same on every attempt, so a
	// receiver can drop duplicates.
	ID string
	// Timestamp is the attempt's time; receivers refuse one more than a few
	// minutes away from their clock, so each retry is signed anew.
	Timestamp time.Time
	// Body is the JSON payload, signed as sent.
	Body []byte
	// Secrets sign the message, each adding a signature: the current
	// secret and, while a rotation overlaps, the previous one.
	Secrets []webhook.Secret
}

// Result is a receiver's answer.
type Result struct {
	Status int
	// Body is the start of the answer, at most 4 KiB.
	Body []byte
}

// OK reports whether the receiver took the message (any 2xx answer).
func (r Result) OK() bool { return r.Status >= 200 && r.Status < 300 }

// Sender signs deliveries and posts them.
type Sender struct {
	client *http.Client
}

// NewSender returns a Sender posting through client (NewClient's, so that
// the Policy holds).
func NewSender(client *http.Client) *Sender { return &Sender{client: client} }

// Send posts d once. Any HTTP answer, a 3xx or 5xx too, is a Result; an
// error means none came (refused address or scheme, connection failure,
// timeout).
func (s *Sender) Send(ctx context.Context, d Delivery) (Result, error) {
	if err := validID(d.ID); err != nil {
		return Result{}, err
	}
	if len(d.Secrets) == 0 {
		return Result{}, errors.New("webhookhttp: a delivery needs at least one secret")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(d.Body))
	if err != nil {
		return Result{}, fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Parley-Webhooks/1")
	req.Header.Set("webhook-id", d.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(d.Timestamp.Unix(), 10))
	req.Header.Set("webhook-signature", Signature(d.ID, d.Timestamp, d.Body, d.Secrets...))
	resp, err := s.client.Do(req)
	if err != nil {
		return Result{}, fmt.Errorf("deliver webhook %s: %w", d.ID, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		// The status came; a body cut short changes nothing about it.
		body = append(body, "…(answer cut short)"...)
	}
	return Result{Status: resp.StatusCode, Body: body}, nil
}
