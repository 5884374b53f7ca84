package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"
)

// Event is something that happened to a user's calls, conversations or
// files, to be delivered to each of the user's endpoints that subscribe to
// its type.
type Event struct {
	// ID is the webhook-id of every delivery of the event: the same on each
	// attempt and to each endpoint, so receivers can drop duplicates.
	ID     uuid.UUID
	UserID uuid.UUID
	Type   string
	// Payload is the JSON body delivered, exactly as signed:
	// {"type": ..., "timestamp": ..., "data": ...}, the Standard Webhooks
	// payload shape.
	Payload   []byte
	CreatedAt time.Time
}

// MaxEventDataBytes bounds an event's data: a receiver takes a few KiB
// per call, and batches of items stay under it.
const MaxEventDataBytes = 256 << 10

// NewEvent returns the event of type t about data (a JSON object of at most
// MaxEventDataBytes) for userID, happening at now.
func NewEvent(userID uuid.UUID, t string, data json.RawMessage, now time.Time) (Event, error) {
	if !slices.Contains(EventTypes(), t) {
		return Event{}, fmt.Errorf("unknown event type %q", t)
	}
	if len(data) > MaxEventDataBytes {
		return Event{}, fmt.Errorf("event data of %d bytes, more than %d", len(data), MaxEventDataBytes)
	}
	if !json.Valid(data) || len(data) == 0 || data[0] != '{' {
		return Event{}, errors.New("event data must be a JSON object")
	}
	now = now.UTC()
	payload, err := json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{t, now, data})
	if err != nil {
		return Event{}, fmt.Errorf("event payload: %w", err)
	}
	return Event{ID: uuid.Must(uuid.NewV7()), UserID: userID, Type: t, Payload: payload, CreatedAt: now}, nil
}

// Attempt is one try at delivering one event to one endpoint.
type Attempt struct {
	URL string
	// ID is the webhook-id (the event's id).
	ID string
	// Timestamp is the attempt's time; receivers refuse one more than a few
	// minutes away from their clock, so each retry is signed anew.
	Timestamp time.Time
	Body      []byte
	// Secrets sign the attempt, one signature each: the endpoint's current
	// secret and, while a rotation overlaps, the older ones.
	Secrets []Secret
}

// Response is a receiver's answer.
type Response struct {
	Status int
	// Body is the start of the answer, for the customer to see why a
	// delivery failed.
	Body []byte
}

// OK reports whether the receiver took the event (any 2xx answer).
func (r Response) OK() bool { return r.Status >= 200 && r.Status < 300 }

// Sender makes attempts. Any HTTP answer is a Response; an error means
// none came (a refused address, a failed connection, a timeout).
type Sender interface {
	Send(ctx context.Context, a Attempt) (Response, error)
}

// Delivery is an event due at one endpoint, leased to one dispatcher.
type Delivery struct {
	ID         int64
	EndpointID uuid.UUID
	URL        string
	Event      Event
	// Attempt numbers this try from 1; with ID it names the lease, which a
	// later claim of the same delivery (after the lease ran out) replaces.
	Attempt int
	// RetrySince is when the retry window began: the event's creation, or
	// the latest redelivery. RetryAttempt numbers this try from there,
	// from 1, for the backoff.
	RetrySince   time.Time
	RetryAttempt int
}

// Outcome is what became of an attempt.
type Outcome struct {
	Delivered bool
	// Park stops the retries: the delivery stays, parked, for the customer
	// to see and redeliver.
	Park bool
	// NextAttemptAt is when a failed, unparked delivery is due again.
	NextAttemptAt time.Time
	Status        int
	Error         string
	At            time.Time
	// Disable, set with Park, says why the endpoint is to be disabled: it
	// answered 410 Gone. Its pending deliveries are parked with this one.
	Disable string
}

// Outbox is the store's queue of deliveries, filled in the transactions of
// the changes that cause the events.
type Outbox interface {
	// ClaimDeliveries leases up to limit deliveries due at now that no
	// other dispatcher holds, until now+lease. Each is the oldest
	// undelivered, unparked delivery of its endpoint, so an endpoint gets
	// its events in order, one at a time.
	ClaimDeliveries(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]Delivery, error)
	// FinishDelivery records o for d if d's lease is still the latest claim
	// of it; a stale lease's outcome is dropped (the newer claim decides).
	// An outcome with Disable also disables d's endpoint and parks its
	// pending deliveries, in the same transaction. A disabled endpoint's
	// deliveries are never claimed.
	FinishDelivery(ctx context.Context, d Delivery, o Outcome) error
	// Secrets returns the secrets that sign the endpoint's deliveries at now.
	Secrets(ctx context.Context, endpointID uuid.UUID, now time.Time) ([]Secret, error)
}

// statusGone is HTTP's 410 Gone, which disables an endpoint.
const statusGone = 410

// Retry schedule: exponential from FirstRetryDelay, capped at
// MaxRetryDelay, each delay jittered to between half and all of itself,
// for at least RetryWindow after the event; the first attempt to fail
// after that parks the delivery.
const (
	FirstRetryDelay = 30 * time.Second
	MaxRetryDelay   = time.Hour
	RetryWindow     = 24 * time.Hour
)

// NextAttempt is the rule for a delivery whose retry window began at
// created (the event's creation or its redelivery) and whose attempt
// number attempt (from there) failed at now: when to try again, or park.
// jitter is uniform in [0, 1).
func NextAttempt(created, now time.Time, attempt int, jitter float64) (next time.Time, park bool) {
	if now.Sub(created) >= RetryWindow {
		return time.Time{}, true
	}
	d := MaxRetryDelay
	if attempt >= 1 && attempt < 20 {
		d = min(FirstRetryDelay<<(attempt-1), MaxRetryDelay)
	}
	half := d / 2
	return now.Add(half + time.Duration(jitter*float64(half))), false
}

// DispatcherOptions tune a Dispatcher. Zero fields take the defaults.
type DispatcherOptions struct {
	// Batch is how many deliveries one claim takes (default 20).
	Batch int
	// Lease is how long a claimed delivery is this dispatcher's (default
	// 2m): a dispatcher that dies mid-delivery leaves it to another once
	// the lease runs out. It must exceed the Sender's timeout.
	Lease time.Duration
	// Poll is the pause between passes that found nothing (default 5s).
	Poll time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Jitter returns a number in [0, 1); nil means math/rand/v2.
	Jitter func() float64
	Log    *slog.Logger
}

// Dispatcher delivers the outbox's events. Every replica runs one; the
// store's leases give each delivery to one at a time, and one that dies
// mid-delivery loses its lease, so delivery is at least once.
type Dispatcher struct {
	outbox Outbox
	sender Sender
	opts   DispatcherOptions
}

// NewDispatcher returns a Dispatcher taking deliveries from outbox and
// making them with sender.
func NewDispatcher(outbox Outbox, sender Sender, opts DispatcherOptions) *Dispatcher {
	if opts.Batch <= 0 {
		opts.Batch = 20
	}
	if opts.Lease <= 0 {
		opts.Lease = 2 * time.Minute
	}
	if opts.Poll <= 0 {
		opts.Poll = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{outbox: outbox, sender: sender, opts: opts}
}

// Run delivers until ctx ends, then returns nil.
func (d *Dispatcher) Run(ctx context.Context) error {
	runPasses(ctx, d.opts.Poll, d.opts.Log, "webhook dispatch pass failed", d.RunOnce)
	return nil
}

// runPasses runs pass until ctx ends: again at once after one that did
// something, else after about poll. A failed pass is logged as failed.
func runPasses(ctx context.Context, poll time.Duration, log *slog.Logger, failed string, pass func(context.Context) (int, error)) {
	for {
		n, err := pass(ctx)
		if err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, failed, slog.String("error", err.Error()))
		}
		if n > 0 && err == nil {
			continue
		}
		// Jitter keeps replicas that started together from polling in step.
		t := time.NewTimer(poll/2 + rand.N(poll))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// RunOnce claims one batch of due deliveries, attempts each (endpoints
// concurrently, as a batch holds one delivery per endpoint) and records
// the outcomes. It returns how many it claimed.
func (d *Dispatcher) RunOnce(ctx context.Context) (int, error) {
	batch, err := d.outbox.ClaimDeliveries(ctx, d.opts.Now(), d.opts.Batch, d.opts.Lease)
	if err != nil {
		return 0, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	errs := make(chan error, len(batch))
	for _, del := range batch {
		go func() { errs <- d.deliver(ctx, del) }()
	}
	var all []error
	for range batch {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return len(batch), errors.Join(all...)
}

func (d *Dispatcher) deliver(ctx context.Context, del Delivery) error {
	now := d.opts.Now()
	secrets, err := d.outbox.Secrets(ctx, del.EndpointID, now)
	if err != nil {
		return fmt.Errorf("secrets of endpoint %s: %w", del.EndpointID, err)
	}
	var resp Response
	if len(secrets) == 0 {
		// Only a bug leaves an endpoint without a secret: retried, and
		// parked in time, like any failure.
		err = errors.New("the endpoint has no secret")
	} else {
		resp, err = d.sender.Send(ctx, Attempt{URL: del.URL, ID: del.Event.ID.String(), Timestamp: now, Body: del.Event.Payload, Secrets: secrets})
	}
	if ctx.Err() != nil {
		// Shutting down: the lease runs out and another replica retries.
		return ctx.Err()
	}
	at := d.opts.Now()
	o := Outcome{Delivered: err == nil && resp.OK(), Status: resp.Status, At: at}
	if !o.Delivered {
		switch {
		case err != nil:
			o.Error = err.Error()
		default:
			o.Error = fmt.Sprintf("answered %d: %.200s", resp.Status, resp.Body)
		}
		o.NextAttemptAt, o.Park = NextAttempt(del.RetrySince, at, del.RetryAttempt, d.opts.Jitter())
		if err == nil && resp.Status == statusGone {
			// Standard Webhooks: 410 means the receiver wants no more.
			o.NextAttemptAt, o.Park = time.Time{}, true
			o.Disable = fmt.Sprintf("answered 410 Gone to event %s", del.Event.ID)
			d.opts.Log.WarnContext(ctx, "webhook endpoint disabled", slog.String("endpoint", del.EndpointID.String()), slog.String("reason", o.Disable))
		} else if o.Park {
			d.opts.Log.WarnContext(ctx, "webhook delivery parked", slog.Int64("delivery", del.ID),
				slog.String("endpoint", del.EndpointID.String()), slog.Int("attempts", del.Attempt), slog.String("error", o.Error))
		}
	}
	if err := d.outbox.FinishDelivery(ctx, del, o); err != nil {
		return fmt.Errorf("finish webhook delivery %d: %w", del.ID, err)
	}
	return nil
}
