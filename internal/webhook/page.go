package webhook

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/rule"
)

// Paging of ListEndpoints.
const (
	DefaultEndpointPageSize = 50
	MaxEndpointPageSize     = 200
)

// ErrInvalidPageToken is returned by ListEndpoints for a page token it did
// not make.
var ErrInvalidPageToken = keyset.ErrInvalidToken

// EndpointPage is a page of a user's endpoints, newest first.
type EndpointPage struct {
	Endpoints     []Endpoint
	NextPageToken string
}

// ListEndpoints returns a page of the caller's endpoints, newest first by
// (CreatedAt, ID), after pageToken ("" for the first). A user has at most
// MaxEndpoints, so the page is cut from all of them here rather than read
// by keyset in the store; the token is a keyset position all the same, so
// an endpoint deleted or added between pages shifts nothing.
func (s *Service) ListEndpoints(ctx context.Context, p auth.Principal, pageSize int, pageToken string) (EndpointPage, error) {
	if err := auth.UserOnly(p); err != nil {
		return EndpointPage{}, err
	}
	switch {
	case pageSize == 0:
		pageSize = DefaultEndpointPageSize
	case pageSize < 0 || pageSize > MaxEndpointPageSize:
		return EndpointPage{}, rule.Broken(fmt.Sprintf("page_size: must be 0 to %d", MaxEndpointPageSize))
	}
	after, err := keyset.Decode(keyset.WebhookEndpoints, pageToken)
	if err != nil {
		return EndpointPage{}, err
	}
	all, err := s.store.Endpoints(ctx, p.ID)
	if err != nil {
		return EndpointPage{}, err
	}
	slices.SortFunc(all, func(a, b Endpoint) int { return -comparePosition(position(a), position(b)) })
	if after != nil {
		all = slices.DeleteFunc(all, func(e Endpoint) bool { return comparePosition(position(e), *after) >= 0 })
	}
	var page EndpointPage
	page.Endpoints, page.NextPageToken = keyset.Page(keyset.WebhookEndpoints, all, pageSize, position)
	return page, nil
}

// position is e's place in ListEndpoints, at the microsecond precision a
// page token keeps.
func position(e Endpoint) keyset.Position {
	return keyset.Position{CreatedAt: e.CreatedAt.Truncate(time.Microsecond).UTC(), ID: e.ID}
}

func comparePosition(a, b keyset.Position) int {
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c
	}
	return slices.Compare(a.ID[:], b.ID[:])
}
