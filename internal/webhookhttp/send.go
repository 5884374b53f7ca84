package webhookhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/parley-dev/parley/internal/webhook"
)

// maxResponseBody is how much of a receiver's answer is kept: enough to
// show a customer why a delivery failed, never a whole page.
const maxResponseBody = 4 << 10

// Sender signs attempts (Standard Webhooks) and posts them. It implements
// webhook.Sender.
type Sender struct {
	client *http.Client
}

var _ webhook.Sender = (*Sender)(nil)

// NewSender returns a Sender posting through client (NewClient's, so that
// the Policy holds).
func NewSender(client *http.Client) *Sender { return &Sender{client: client} }

// Send posts a once. Any HTTP answer, a 3xx or 5xx too, is a Response, its
// body cut at 4 KiB; an error means none came (refused address or scheme,
// connection failure, timeout).
func (s *Sender) Send(ctx context.Context, a webhook.Attempt) (webhook.Response, error) {
	if err := validID(a.ID); err != nil {
		return webhook.Response{}, err
	}
	if len(a.Secrets) == 0 {
		return webhook.Response{}, errors.New("a delivery needs at least one secret")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL, bytes.NewReader(a.Body))
	if err != nil {
		return webhook.Response{}, fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Parley-Webhooks/1")
	req.Header.Set("webhook-id", a.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(a.Timestamp.Unix(), 10))
	req.Header.Set("webhook-signature", Signature(a.ID, a.Timestamp, a.Body, a.Secrets...))
	resp, err := s.client.Do(req)
	if err != nil {
		return webhook.Response{}, fmt.Errorf("deliver webhook %s: %w", a.ID, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		// The status came; a body cut short changes nothing about it.
		body = append(body, "…(answer cut short)"...)
	}
	return webhook.Response{Status: resp.StatusCode, Body: body}, nil
}
