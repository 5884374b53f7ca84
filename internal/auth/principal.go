// Package auth holds who is calling: the principal every domain service is
// handed, and the errors that say a caller may not proceed. It knows nothing of
// tokens' wire format; the token adapter turns a bearer token into a Principal.
package auth

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Kind is the sort of principal behind a request.
type Kind int

const (
	// KindUser is a person signed in with email and password.
	KindUser Kind = iota + 1
	// KindAgent is an AI agent signed in with an API key.
	KindAgent
)

// String returns the role name carried in tokens ("user" or "agent").
func (k Kind) String() string {
	switch k {
	case KindUser:
		return "user"
	case KindAgent:
		return "agent"
	default:
		return "unknown"
	}
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, bool) {
	switch s {
	case "user":
		return KindUser, true
	case "agent":
		return KindAgent, true
	default:
		return 0, false
	}
}

// Principal is the verified caller of a request.
type Principal struct {
	// ID is the user id for users and the agent key id for agents.
	ID   uuid.UUID
	Kind Kind
	// TokenID is the access token's jti, used to revoke it.
	TokenID string
	// FamilyID is the refresh family (one sign-in) a user's access token
	// was issued from, revoked with the family. It is uuid.Nil for agents
	// and for tokens issued before tokens named their family.
	FamilyID uuid.UUID
	// ExpiresAt is when the access token stops being valid.
	ExpiresAt time.Time
}

// IsUser reports whether the principal is a signed-in user.
func (p Principal) IsUser() bool { return p.Kind == KindUser }

// IsAgent reports whether the principal is an agent.
func (p Principal) IsAgent() bool { return p.Kind == KindAgent }

var (
	// ErrUnauthenticated is returned when a request carries no valid credentials:
	// a missing, malformed, expired, revoked or wrongly signed token, or a wrong password.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied is returned when the principal's kind may not make the call
	// at all (an agent calling a user-only RPC). Reaching someone else's resource is
	// never this error: it is the owning domain's ErrNotFound.
	ErrPermissionDenied = errors.New("permission denied")
)

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal stored by WithPrincipal.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
