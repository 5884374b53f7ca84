package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/rule"
)

// Limits of the endpoint rules.
const (
	MaxURLBytes = 2048
	// MaxEndpoints bounds a user's endpoints.
	MaxEndpoints = 20
	// DefaultRotationOverlap is how long a rotated-out secret still signs,
	// beside the new one, when a rotation names no overlap: time for the
	// customer to deploy the new secret.
	DefaultRotationOverlap = 24 * time.Hour
	// MaxRotationOverlap bounds that time.
	MaxRotationOverlap = 7 * 24 * time.Hour
)

// Store keeps endpoints and their secrets.
type Store interface {
	// CreateEndpoint stores e with s as its only secret, unless the user
	// has max endpoints already (ErrTooManyEndpoints); concurrent creates
	// of one user take turns, so the bound holds.
	CreateEndpoint(ctx context.Context, e Endpoint, s Secret, max int) (Endpoint, error)
	// Endpoint returns the user's endpoint, or ErrNotFound.
	Endpoint(ctx context.Context, id, userID uuid.UUID) (Endpoint, error)
	// Endpoints returns the user's endpoints, oldest first.
	Endpoints(ctx context.Context, userID uuid.UUID) ([]Endpoint, error)
	// DeleteEndpoint deletes the user's endpoint with its secrets, or
	// returns ErrNotFound.
	DeleteEndpoint(ctx context.Context, id, userID uuid.UUID) error
	// RotateSecret makes s the endpoint's newest secret and has every
	// older one stop signing at retireAt (or earlier, if it already was
	// to), in one transaction; ErrNotFound if the user has no such
	// endpoint.
	RotateSecret(ctx context.Context, id, userID uuid.UUID, s Secret, retireAt time.Time) error
	// Secrets returns the secrets that sign the endpoint's deliveries at
	// now, newest first.
	Secrets(ctx context.Context, id uuid.UUID, now time.Time) ([]Secret, error)
	// EnableEndpoint clears the user's endpoint's disabling and, if
	// redeliver, makes its parked deliveries pending again, due at now
	// with a new retry window, in one transaction; it returns the endpoint
	// and how many it redelivered. An enabled endpoint is returned
	// unchanged with 0; ErrNotFound if the user has no such endpoint.
	EnableEndpoint(ctx context.Context, id, userID uuid.UUID, now time.Time, redeliver bool) (Endpoint, int, error)
}

// Options are the optional settings of a Service.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives what the prune job did; nil discards it.
	Log *slog.Logger
}

// Service is the endpoint use cases. Endpoints are user-scoped: agents are
// refused, and a user reaches only its own.
type Service struct {
	store Store
	urls  URLChecker
	now   func() time.Time
}

// NewService returns a Service keeping endpoints in store and checking
// their URLs with urls.
func NewService(store Store, urls URLChecker, opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{store: store, urls: urls, now: opts.Now}
}

// eventTypes checks types and returns them sorted, without repeats.
func eventTypes(types []string) ([]string, error) {
	if len(types) == 0 {
		return nil, rule.Broken("event_types: name at least one event type")
	}
	known := EventTypes()
	out := make([]string, 0, len(types))
	for _, t := range types {
		if !slices.Contains(known, t) {
			return nil, rule.Broken(fmt.Sprintf("event_types: unknown event type %q", t))
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// RegisterEndpoint stores a new endpoint of the caller and returns it with
// its secret, which the caller is shown only now.
func (s *Service) RegisterEndpoint(ctx context.Context, p auth.Principal, url string, types []string) (Endpoint, Secret, error) {
	if err := auth.UserOnly(p); err != nil {
		return Endpoint{}, Secret{}, err
	}
	if url == "" || len(url) > MaxURLBytes || !utf8.ValidString(url) {
		return Endpoint{}, Secret{}, rule.Broken(fmt.Sprintf("url: must be 1 to %d bytes of UTF-8", MaxURLBytes))
	}
	if err := s.urls.CheckURL(ctx, url); err != nil {
		if ctx.Err() != nil {
			return Endpoint{}, Secret{}, ctx.Err()
		}
		return Endpoint{}, Secret{}, rule.Broken(fmt.Sprintf("url: %v", err))
	}
	types, err := eventTypes(types)
	if err != nil {
		return Endpoint{}, Secret{}, err
	}
	secret := NewSecret()
	e, err := s.store.CreateEndpoint(ctx, Endpoint{
		ID: uuid.Must(uuid.NewV7()), UserID: p.ID, URL: url, EventTypes: types, CreatedAt: s.now(),
	}, secret, MaxEndpoints)
	if err != nil {
		return Endpoint{}, Secret{}, err
	}
	return e, secret, nil
}

// Endpoint returns one of the caller's endpoints.
func (s *Service) Endpoint(ctx context.Context, p auth.Principal, id uuid.UUID) (Endpoint, error) {
	if err := auth.UserOnly(p); err != nil {
		return Endpoint{}, err
	}
	return s.store.Endpoint(ctx, id, p.ID)
}

// Endpoints returns the caller's endpoints, oldest first.
func (s *Service) Endpoints(ctx context.Context, p auth.Principal) ([]Endpoint, error) {
	if err := auth.UserOnly(p); err != nil {
		return nil, err
	}
	return s.store.Endpoints(ctx, p.ID)
}

// DeleteEndpoint deletes one of the caller's endpoints.
func (s *Service) DeleteEndpoint(ctx context.Context, p auth.Principal, id uuid.UUID) error {
	if err := auth.UserOnly(p); err != nil {
		return err
	}
	return s.store.DeleteEndpoint(ctx, id, p.ID)
}

// RotateSecret gives one of the caller's endpoints a new secret, returned
// only now. For overlap (0: DefaultRotationOverlap) the older secrets keep
// signing beside it, so a receiver verifies with either while the customer
// deploys the new one.
func (s *Service) RotateSecret(ctx context.Context, p auth.Principal, id uuid.UUID, overlap time.Duration) (Secret, error) {
	if err := auth.UserOnly(p); err != nil {
		return Secret{}, err
	}
	switch {
	case overlap == 0:
		overlap = DefaultRotationOverlap
	case overlap < 0 || overlap > MaxRotationOverlap:
		return Secret{}, rule.Broken(fmt.Sprintf("overlap: must be 0 to %v", MaxRotationOverlap))
	}
	secret := NewSecret()
	if err := s.store.RotateSecret(ctx, id, p.ID, secret, s.now().Add(overlap)); err != nil {
		return Secret{}, err
	}
	return secret, nil
}

// EnableEndpoint re-enables one of the caller's endpoints that a 410 Gone
// disabled and, unless keepParked, puts every parked delivery of it back
// in its line in the same transaction: they keep their places, so they go
// out oldest first and nothing newer overtakes them. It returns the
// endpoint and how many deliveries it redelivered; an enabled endpoint is
// left as it is.
func (s *Service) EnableEndpoint(ctx context.Context, p auth.Principal, id uuid.UUID, keepParked bool) (Endpoint, int, error) {
	if err := auth.UserOnly(p); err != nil {
		return Endpoint{}, 0, err
	}
	return s.store.EnableEndpoint(ctx, id, p.ID, s.now(), !keepParked)
}
