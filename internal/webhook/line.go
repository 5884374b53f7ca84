package webhook

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/rule"
)

// Paging of ListEndpointDeliveries.
const (
	DefaultDeliveryPageSize = 50
	MaxDeliveryPageSize     = 200
)

// ErrEndpointDisabled is returned by RedeliverParked for an endpoint that
// is disabled: EnableEndpoint redelivers its parked deliveries.
var ErrEndpointDisabled = errors.New("webhook endpoint is disabled: EnableEndpoint redelivers its parked deliveries")

// DeliveryQuery asks for a page of one endpoint's deliveries in one state.
type DeliveryQuery struct {
	EndpointID uuid.UUID
	State      DeliveryState
	// OldestFirst lists the line from its oldest delivery; the default is
	// newest first.
	OldestFirst bool
	// PageSize is 0 (DefaultDeliveryPageSize) to MaxDeliveryPageSize.
	PageSize int
	// PageToken is a previous page's NextPageToken for the same State and
	// order, or "" for the first page.
	PageToken string
}

// DeliveryRange is the store's read of a page: up to Limit deliveries of
// EndpointID in State, in ID order (descending unless OldestFirst),
// strictly after the ID After (0: from the start).
type DeliveryRange struct {
	EndpointID  uuid.UUID
	State       DeliveryState
	OldestFirst bool
	After       int64
	Limit       int
}

// DeliveryPage is a page of an endpoint's deliveries.
type DeliveryPage struct {
	Deliveries []DeliveryStatus
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// ListEndpointDeliveries returns a page of one of the caller's endpoints'
// deliveries in q.State across its events, in line order: parked ones
// are found here without knowing their events.
func (s *Events) ListEndpointDeliveries(ctx context.Context, p auth.Principal, q DeliveryQuery) (DeliveryPage, error) {
	if err := auth.UserOnly(p); err != nil {
		return DeliveryPage{}, err
	}
	switch q.State {
	case DeliveryPending, DeliveryDelivered, DeliveryParked:
	default:
		return DeliveryPage{}, rule.Broken("state: must be pending, delivered or parked")
	}
	size := q.PageSize
	switch {
	case size == 0:
		size = DefaultDeliveryPageSize
	case size < 0 || size > MaxDeliveryPageSize:
		return DeliveryPage{}, rule.Broken(fmt.Sprintf("page_size: must be 0 to %d", MaxDeliveryPageSize))
	}
	r := DeliveryRange{EndpointID: q.EndpointID, State: q.State, OldestFirst: q.OldestFirst, Limit: size + 1}
	if q.PageToken != "" {
		t, err := decodeDeliveryToken(q.PageToken)
		if err != nil {
			return DeliveryPage{}, err
		}
		if t.State != q.State || t.OldestFirst != q.OldestFirst {
			return DeliveryPage{}, ErrInvalidPageToken
		}
		r.After = t.After
	}
	ds, err := s.store.EndpointDeliveries(ctx, p.ID, r)
	if err != nil {
		return DeliveryPage{}, err
	}
	page := DeliveryPage{Deliveries: ds}
	if len(ds) > size {
		page.Deliveries = ds[:size]
		page.NextPageToken = deliveryToken{State: q.State, OldestFirst: q.OldestFirst, After: ds[size-1].ID}.text()
	}
	return page, nil
}

// RedeliverParked retries every parked delivery of one of the caller's
// endpoints now, each with a new retry window, in one transaction, and
// returns how many (0 when none was parked). They keep their places in
// the endpoint's line, ahead of every newer pending delivery, so they go
// out oldest first and before those.
func (s *Events) RedeliverParked(ctx context.Context, p auth.Principal, endpointID uuid.UUID) (int, error) {
	if err := auth.UserOnly(p); err != nil {
		return 0, err
	}
	return s.store.RedeliverParked(ctx, p.ID, endpointID, s.now())
}

// deliveryTokenVersion is the first byte of a ListEndpointDeliveries
// token, clear of keyset's lists (2 to 9) and conversation's tokens (1,
// 16), so that no list takes another's tokens.
const deliveryTokenVersion = 33

// deliveryToken is where a ListEndpointDeliveries page continues: past
// the delivery After, for one state and order.
type deliveryToken struct {
	State       DeliveryState
	OldestFirst bool
	After       int64
}

// text is base64url (unpadded) of the version, the state, the order (1
// newest first, 2 oldest first) and After as a uvarint.
func (t deliveryToken) text() string {
	var b [3 + binary.MaxVarintLen64]byte
	b[0], b[1], b[2] = deliveryTokenVersion, byte(t.State), 1
	if t.OldestFirst {
		b[2] = 2
	}
	n := binary.PutUvarint(b[3:], uint64(t.After))
	return base64.RawURLEncoding.EncodeToString(b[:3+n])
}

func decodeDeliveryToken(s string) (deliveryToken, error) {
	if len(s) > 64 {
		return deliveryToken{}, ErrInvalidPageToken
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 4 || b[0] != deliveryTokenVersion || (b[2] != 1 && b[2] != 2) {
		return deliveryToken{}, ErrInvalidPageToken
	}
	after, n := binary.Uvarint(b[3:])
	if n <= 0 || 3+n != len(b) || after < 1 || after > 1<<62 {
		return deliveryToken{}, ErrInvalidPageToken
	}
	t := deliveryToken{State: DeliveryState(b[1]), OldestFirst: b[2] == 2, After: int64(after)}
	// Only text's own spelling: base64 skips newlines and ignores spare
	// bits, and a varint may carry redundant bytes.
	if t.text() != s {
		return deliveryToken{}, ErrInvalidPageToken
	}
	return t, nil
}
