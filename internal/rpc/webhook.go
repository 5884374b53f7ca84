package rpc

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

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

// WebhookHandler serves POST /livekit/webhook.
type WebhookHandler struct {
	verifier WebhookVerifier
	events   EventApplier
	log      *slog.Logger
	refused  *prometheus.CounterVec
}

// WebhookRefusals counts, in parley_livekit_webhook_refused_total, the
// verified LiveKit webhook events refused and the recording imports refused
// for their source, by event and reason. It is made before the handler
// because the file outbox, which the room service wakes, counts into it.
type WebhookRefusals struct{ vec *prometheus.CounterVec }

// NewWebhookRefusals returns the counter, registered on reg unless it is
// nil.
func NewWebhookRefusals(reg prometheus.Registerer) *WebhookRefusals {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_livekit_webhook_refused_total",
		Help: "Verified LiveKit webhook events refused (and recording imports refused for their source), by event and reason.",
	}, []string{"event", "reason"})
	if reg != nil {
		reg.MustRegister(vec)
	}
	return &WebhookRefusals{vec: vec}
}

// RecordingSourceRefused counts a recording import the file outbox refused
// because its source is in Parley's own file namespace; it is
// file.WorkerOptions.SourceRefused.
func (r *WebhookRefusals) RecordingSourceRefused() {
	r.vec.WithLabelValues(room.EventEgressEnded.String(), "source_in_file_namespace").Inc()
}

// NewWebhookHandler returns the handler of POST /livekit/webhook. A request
// that fails verification is 401 and changes nothing. A verified event that
// cannot be applied is 500, so LiveKit delivers it again; applying is
// idempotent by event id. A verified event the room service refuses is
// logged, counted in refused (nil: in a counter of its own, unregistered),
// and answered 200 like any other.
func NewWebhookHandler(v WebhookVerifier, events EventApplier, log *slog.Logger, refused *WebhookRefusals) *WebhookHandler {
	if refused == nil {
		refused = NewWebhookRefusals(nil)
	}
	return &WebhookHandler{verifier: v, events: events, log: log, refused: refused.vec}
}

// RecordingSourceRefused is WebhookRefusals.RecordingSourceRefused on the
// handler's counter.
func (h *WebhookHandler) RecordingSourceRefused() {
	(&WebhookRefusals{vec: h.refused}).RecordingSourceRefused()
}

// ServeHTTP implements http.Handler.
func (h *WebhookHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBytes)
	ev, err := h.verifier.Verify(r)
	if err != nil {
		status := http.StatusUnauthorized
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		h.log.WarnContext(r.Context(), "livekit webhook refused", slog.String("error", err.Error()))
		http.Error(w, http.StatusText(status), status)
		return
	}
	err = h.events.ApplyEvent(r.Context(), ev)
	var refused *room.RefusedError
	switch {
	case errors.As(err, &refused):
		// Final: a redelivery would be refused alike, and an answer that
		// differs from an applied event's would tell a forger what matched.
		h.refused.WithLabelValues(ev.Kind.String(), refused.Reason).Inc()
		h.log.WarnContext(r.Context(), "livekit webhook event refused", slog.String("event_id", ev.ID),
			slog.String("event", ev.Kind.String()), slog.String("livekit_room", ev.LiveKitRoom),
			slog.String("reason", refused.Reason), slog.String("detail", refused.Detail))
	case err != nil:
		h.log.ErrorContext(r.Context(), "livekit webhook not applied", slog.String("event_id", ev.ID),
			slog.String("event", ev.Kind.String()), slog.String("error", err.Error()))
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
}
