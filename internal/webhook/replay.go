package webhook

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/rule"
)

// Paging of ListEvents.
const (
	DefaultEventPageSize = 100
	MaxEventPageSize     = 500
)

// ErrEventNotFound is returned when an event does not exist or is not the
// caller's. It is an ErrNotFound, so callers that test for that still match.
var ErrEventNotFound = fmt.Errorf("webhook event not found: %w", ErrNotFound)

// ErrInvalidCursor is returned by ListEvents for a cursor it did not make.
var ErrInvalidCursor = rule.Broken("cursor: not one that ListEvents returned")

// Cursor is a position in a user's events: after the event of transaction
// XID with ID. Events are ordered by (XID, ID) and listed only once every
// transaction before them has ended, so a cursor never passes an event
// that commits later.
type Cursor struct {
	XID int64
	ID  uuid.UUID
}

// cursorBytes is the length of a cursor's binary form: XID then ID.
const cursorBytes = 8 + 16

// Text is the cursor as clients hold it.
func (c Cursor) Text() string {
	b := make([]byte, cursorBytes)
	binary.BigEndian.PutUint64(b, uint64(c.XID))
	copy(b[8:], c.ID[:])
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseCursor reads a cursor in its Text form, and only in it; "" is the
// start of the user's events.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != cursorBytes || int64(binary.BigEndian.Uint64(b)) < 0 {
		return Cursor{}, ErrInvalidCursor
	}
	c := Cursor{XID: int64(binary.BigEndian.Uint64(b))}
	copy(c.ID[:], b[8:])
	if c.Text() != s {
		return Cursor{}, ErrInvalidCursor
	}
	return c, nil
}

// ListedEvent is an event with its position.
type ListedEvent struct {
	Event
	Cursor Cursor
}

// DeliveryState is where a delivery stands.
type DeliveryState int

// The states of a delivery.
const (
	DeliveryPending DeliveryState = iota + 1
	DeliveryDelivered
	// DeliveryParked: retried for RetryWindow and given up, until a
	// Redeliver.
	DeliveryParked
)

func (s DeliveryState) String() string {
	switch s {
	case DeliveryPending:
		return "pending"
	case DeliveryDelivered:
		return "delivered"
	case DeliveryParked:
		return "parked"
	}
	return fmt.Sprintf("DeliveryState(%d)", int(s))
}

// DeliveryStatus is what became of an event at one endpoint.
type DeliveryStatus struct {
	// ID is the delivery's place in its endpoint's line: an endpoint's
	// deliveries go out in ID order.
	ID             int64
	EventID        uuid.UUID
	EventType      string
	EventCreatedAt time.Time
	EndpointID     uuid.UUID
	State          DeliveryState
	Attempts       int
	NextAttemptAt  time.Time
	// LastStatus is the last answer's HTTP status (0: none came).
	LastStatus int
	LastError  string
	// FinishedAt is when it was delivered or parked (zero while pending).
	FinishedAt time.Time
}

// EventStore lists a user's events and their deliveries.
type EventStore interface {
	// Events returns up to limit of the user's events after c, in cursor
	// order, none whose transaction may still be followed by an earlier one.
	Events(ctx context.Context, userID uuid.UUID, after Cursor, limit int) ([]ListedEvent, error)
	// Deliveries returns the deliveries of the user's event, or
	// ErrEventNotFound.
	Deliveries(ctx context.Context, userID, eventID uuid.UUID) ([]DeliveryStatus, error)
	// Redeliver makes the event's parked deliveries to enabled endpoints
	// pending again, due at now with a new retry window, and returns how
	// many; ErrEventNotFound if the user has no such event.
	Redeliver(ctx context.Context, userID, eventID uuid.UUID, now time.Time) (int, error)
	// EndpointDeliveries returns up to r.Limit of the deliveries in r, or
	// ErrNotFound if the user has no such endpoint.
	EndpointDeliveries(ctx context.Context, userID uuid.UUID, r DeliveryRange) ([]DeliveryStatus, error)
	// RedeliverParked makes every parked delivery of the user's endpoint
	// pending again, due at now with a new retry window, in one
	// transaction, and returns how many; ErrNotFound if the user has no
	// such endpoint, ErrEndpointDisabled if it is disabled.
	RedeliverParked(ctx context.Context, userID, endpointID uuid.UUID, now time.Time) (int, error)
	// PruneEvents deletes the events created before before that have no
	// pending delivery, with their deliveries, and returns how many.
	PruneEvents(ctx context.Context, before time.Time) (int64, error)
}

// EventRetention is how long an event stays listed and redeliverable. A
// delivery still pending keeps its event past it.
const EventRetention = 30 * 24 * time.Hour

// Events is the replay use cases over an EventStore.
type Events struct {
	store EventStore
	now   func() time.Time
	log   *slog.Logger
}

// NewEvents returns the replay use cases.
func NewEvents(store EventStore, opts Options) *Events {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Events{store: store, now: opts.Now, log: opts.Log}
}

// Prune deletes the events older than EventRetention with no pending
// delivery, and logs what it did; it is an hourly job. Every replica may
// run it: the delete is idempotent and skips rows another holds.
func (s *Events) Prune(ctx context.Context) {
	n, err := s.store.PruneEvents(ctx, s.now().Add(-EventRetention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("prune outbound webhook events", slog.String("error", err.Error()))
	case n > 0:
		s.log.Info("pruned outbound webhook events", slog.Int64("count", n))
	}
}

// ListEvents returns the caller's events after cursor (its Text; "" for
// the first), oldest first, and the cursor to go on from. The cursor comes
// back even after the last event, unchanged if there was none, so a client
// replays by calling again with it. An event is listed once every
// transaction on the database server older than its own has ended: a long
// transaction delays new events here (never drops or reorders them), and
// deliveries not at all.
func (s *Events) ListEvents(ctx context.Context, p auth.Principal, cursor string, pageSize int) ([]Event, string, error) {
	if err := auth.UserOnly(p); err != nil {
		return nil, "", err
	}
	switch {
	case pageSize == 0:
		pageSize = DefaultEventPageSize
	case pageSize < 0 || pageSize > MaxEventPageSize:
		return nil, "", rule.Broken(fmt.Sprintf("page_size: must be 0 to %d", MaxEventPageSize))
	}
	after, err := ParseCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	listed, err := s.store.Events(ctx, p.ID, after, pageSize)
	if err != nil {
		return nil, "", err
	}
	events := make([]Event, len(listed))
	for i, l := range listed {
		events[i] = l.Event
	}
	if len(listed) == 0 {
		return events, cursor, nil
	}
	return events, listed[len(listed)-1].Cursor.Text(), nil
}

// Deliveries returns what became of one of the caller's events at each
// endpoint, parked ones included.
func (s *Events) Deliveries(ctx context.Context, p auth.Principal, eventID uuid.UUID) ([]DeliveryStatus, error) {
	if err := auth.UserOnly(p); err != nil {
		return nil, err
	}
	return s.store.Deliveries(ctx, p.ID, eventID)
}

// ErrNothingToRedeliver is returned by Redeliver for an event none of whose
// deliveries is parked.
var ErrNothingToRedeliver = errors.New("no parked delivery of the event")

// Redeliver retries the parked deliveries of one of the caller's events
// now, each with a new retry window, and returns how many.
func (s *Events) Redeliver(ctx context.Context, p auth.Principal, eventID uuid.UUID) (int, error) {
	if err := auth.UserOnly(p); err != nil {
		return 0, err
	}
	n, err := s.store.Redeliver(ctx, p.ID, eventID, s.now())
	if err == nil && n == 0 {
		return 0, ErrNothingToRedeliver
	}
	return n, err
}
