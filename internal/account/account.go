// Package account is who may use Parley: users who sign in with email and
// password, agents who trade an API key for a short-lived token, the refresh
// tokens that keep users signed in, and the revocation that signs them out.
//
// It holds the rules and declares what it needs from the outside world
// (Store, Tokens, RevocationCache); the adapters that implement those live in
// internal/postgres, internal/token and internal/revocation.
package account

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// User is a person who signs in with email and password.
type User struct {
	ID uuid.UUID
	// Email is trimmed and lower-cased; it is unique among users.
	Email       string
	DisplayName string
	CreatedAt   time.Time
}

// TokenPair is what a user gets on Register, Login and Refresh: a short-lived
// signed access token and an opaque refresh token to get the next pair.
type TokenPair struct {
	AccessToken      string
	RefreshToken     string
	AccessExpiresAt  time.Time
	RefreshExpiresAt time.Time
}

// AccessToken is a signed access token as issued by Tokens.
type AccessToken struct {
	// Token is the encoded token the client sends as a bearer token.
	Token string
	// ID is the token's jti, by which it is revoked.
	ID        string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// AgentKey is an API key an agent trades for access tokens. Only a hash of
// the key itself is stored; the plaintext is shown once, at creation.
type AgentKey struct {
	ID        uuid.UUID
	Name      string
	CreatedAt time.Time
	// RevokedAt is when the key was revoked; zero while it is usable.
	RevokedAt time.Time
}

// RefreshToken is a stored refresh token: only the SHA-256 hash of the token
// the client holds. Every token descends from one login (its family); spending
// a token twice revokes the whole family, with the access tokens issued from
// it.
type RefreshToken struct {
	ID        uuid.UUID
	Hash      []byte
	UserID    uuid.UUID
	FamilyID  uuid.UUID
	ExpiresAt time.Time
	// AccessExpiresAt is, for a token to be stored, when the access token
	// issued beside it expires at the latest; the store keeps the latest of
	// these for each family. A token the store returns carries its family's.
	AccessExpiresAt time.Time
}

// RevokedToken is a revoked access token, refused until it expires anyway.
type RevokedToken struct {
	// ID is the token's jti.
	ID        string
	ExpiresAt time.Time
}

// RevokedFamily is a revoked refresh family: every access token issued from
// it is refused until ExpiresAt, by which they have all expired anyway.
type RevokedFamily struct {
	ID        uuid.UUID
	ExpiresAt time.Time
}

// Store keeps users, refresh tokens, agent keys and access-token revocations.
// Each method is its own transaction.
type Store interface {
	// CreateUser stores a new user with its password hash. It returns
	// ErrEmailTaken when the email is in use.
	CreateUser(ctx context.Context, u User, passwordHash string) (User, error)
	// UserByEmail returns the user and its password hash, or ErrUserNotFound.
	UserByEmail(ctx context.Context, email string) (User, string, error)
	// User returns the user with the id, or ErrUserNotFound.
	User(ctx context.Context, id uuid.UUID) (User, error)
	// UpdateDisplayName changes a user's display name and returns the user,
	// or ErrUserNotFound.
	UpdateDisplayName(ctx context.Context, id uuid.UUID, displayName string, now time.Time) (User, error)

	// CreateRefreshToken stores the first token of a new family (t.FamilyID).
	CreateRefreshToken(ctx context.Context, t RefreshToken) error
	// RotateRefreshToken spends the token whose hash is given and stores next
	// as its child, in the same family, in one transaction that locks the
	// spent row so that concurrent rotations of one token are serialised.
	// next's UserID and FamilyID are filled in from the spent token, which is
	// returned. An unknown or expired token (expiry compared with now) gives
	// auth.ErrUnauthenticated. A token that was already spent, or whose family
	// is revoked, gets its whole family and the family's access tokens
	// revoked (committed, until the returned token's AccessExpiresAt) and
	// gives ErrRefreshTokenReused.
	RotateRefreshToken(ctx context.Context, hash []byte, next RefreshToken, now time.Time) (RefreshToken, error)
	// RevokeRefreshFamily revokes the family of the token with the hash, and
	// the access tokens issued from it, if the token belongs to the user. It
	// returns the revocation and whether there was one.
	RevokeRefreshFamily(ctx context.Context, hash []byte, userID uuid.UUID, now time.Time) (RevokedFamily, bool, error)

	// CreateAgentKey stores a new agent key by the hash of its plaintext.
	CreateAgentKey(ctx context.Context, k AgentKey, hash []byte) (AgentKey, error)
	// AgentKeyByHash returns the agent key with the hash, revoked or not, or
	// auth.ErrUnauthenticated when there is none.
	AgentKeyByHash(ctx context.Context, hash []byte) (AgentKey, error)
	// RevokeAgentKey revokes the agent key with the id, or returns
	// ErrAgentKeyNotFound. Revoking a revoked key changes nothing.
	RevokeAgentKey(ctx context.Context, id uuid.UUID, now time.Time) error

	// RevokeAccessToken records that an access token is revoked until it
	// expires. Recording it twice is not an error.
	RevokeAccessToken(ctx context.Context, t RevokedToken) error
	// IsAccessTokenRevoked reports whether the access token with the jti, or
	// its refresh family unless that is uuid.Nil, is recorded as revoked.
	IsAccessTokenRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error)
	// RevokedAccessTokens returns every revocation that has not expired at now.
	RevokedAccessTokens(ctx context.Context, now time.Time) ([]RevokedToken, error)
	// RevokedFamilies returns every family revocation that has not expired
	// at now.
	RevokedFamilies(ctx context.Context, now time.Time) ([]RevokedFamily, error)
	// PruneRevokedAccessTokens deletes revocations of tokens that expired
	// before the time and returns how many it deleted.
	PruneRevokedAccessTokens(ctx context.Context, before time.Time) (int64, error)
	// PruneRevokedFamilies deletes family revocations that expired before
	// the time and returns how many it deleted.
	PruneRevokedFamilies(ctx context.Context, before time.Time) (int64, error)
	// PruneRefreshTokens deletes refresh tokens that expired before the
	// time, spent or not, and the families left without a token, and
	// returns how many tokens it deleted.
	PruneRefreshTokens(ctx context.Context, before time.Time) (int64, error)
}

// Tokens signs and verifies access tokens. internal/token.Manager does the
// work.
type Tokens interface {
	// IssueAccess signs an access token for the subject (a user id or an
	// agent key id) of the kind, valid for ttl, issued from the refresh
	// family (uuid.Nil for none), which Verify reads back into
	// auth.Principal.FamilyID.
	IssueAccess(sub uuid.UUID, kind auth.Kind, family uuid.UUID, ttl time.Duration) (AccessToken, error)
	// Verify checks a token's signature and expiry and returns its principal.
	// Any error means the token is not acceptable.
	Verify(token string) (auth.Principal, error)
}

// RevocationCache answers, on the request path, whether an access token was
// revoked. It is the fast path in front of the Store's record of
// revocations, which the Service writes first; the cache must fall back to
// that record whenever it cannot vouch for its own answer.
type RevocationCache interface {
	// Revoke makes the token with the jti refused until exp. The Service has
	// already recorded it in the Store, so Revoke may give up (and log)
	// when the cache is unreachable.
	Revoke(ctx context.Context, jti string, exp time.Time) error
	// RevokeFamily makes every access token of the refresh family refused
	// until exp, as Revoke does for one token.
	RevokeFamily(ctx context.Context, family uuid.UUID, exp time.Time) error
	// IsRevoked reports whether the token with the jti, or its family unless
	// that is uuid.Nil, was revoked. An error means neither the cache nor the
	// Store could answer.
	IsRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error)
}
