package rpc

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/parley-dev/parley/internal/room"
)

// maxWebhookBytes bounds a webhook body; LiveKit's events are a few KiB.
const maxWebhookBytes = 1 << 20

// WebhookVerifier authenticates a LiveKit webhook request and returns its
// event. It answers room.ErrInvalidWebhook for a missing, wrong or stale
// signature. internal/rtc implements it with LiveKit's webhook package.
type WebhookVerifier interface {
	Verify(r *http.Request) (room.Event, error)
}

// EventApplier applies verified webhook events; *room.Service is one.
type EventApplier interface {
	ApplyEvent(ctx context.Context, e room.Event) error
}

// NewWebhookHandler returns the handler of POST /livekit/webhook. A request
// that fails verification is 401 and changes nothing. A verified event that
// cannot be applied is 500, so LiveKit delivers it again; applying is
// idempotent by event id.
func NewWebhookHandler(v WebhookVerifier, events EventApplier, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBytes)
		ev, err := v.Verify(r)
		if err != nil {
			status := http.StatusUnauthorized
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				status = http.StatusRequestEntityTooLarge
			}
			log.WarnContext(r.Context(), "livekit webhook refused", slog.String("error", err.Error()))
			http.Error(w, http.StatusText(status), status)
			return
		}
		if err := events.ApplyEvent(r.Context(), ev); err != nil {
			log.ErrorContext(r.Context(), "livekit webhook not applied", slog.String("event_id", ev.ID),
				slog.String("event", ev.Kind.String()), slog.String("error", err.Error()))
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}
