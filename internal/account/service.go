package account

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// Defaults for Options.
const (
	DefaultAccessTTL       = 30 * time.Minute
	DefaultRefreshTTL      = 720 * time.Hour
	DefaultAgentTTL        = 15 * time.Minute
	DefaultHashConcurrency = 2
)

const (
	// PruneExpired keeps a revocation for revocationPruneMargin after its
	// token expired: verifiers accept a token for a clock-skew leeway past
	// its expiry, and replicas' clocks differ.
	revocationPruneMargin = time.Hour
	// An expired refresh token is refused whether it is stored or not; it
	// is kept a day longer so that a Logout presenting it can still find
	// and revoke its family, and reuse can be looked into.
	refreshPruneMargin = 24 * time.Hour
)

// Options tune a Service. Zero values take the defaults.
type Options struct {
	// AccessTTL is how long a user's access token is valid (DefaultAccessTTL).
	AccessTTL time.Duration
	// RefreshTTL is how long a refresh token is valid (DefaultRefreshTTL).
	RefreshTTL time.Duration
	// AgentTTL is how long an agent's access token is valid (DefaultAgentTTL).
	AgentTTL time.Duration
	// HashConcurrency bounds how many password hashes run at once, each
	// taking 64 MiB (DefaultHashConcurrency).
	HashConcurrency int
	// Logger receives security events (refresh token reuse) and failures
	// that do not fail the call. Nil discards them.
	Logger *slog.Logger
	// Now is the clock (time.Now).
	Now func() time.Time
}

// Service signs users and agents in and out and keeps user profiles.
type Service struct {
	store   Store
	tokens  Tokens
	revoked RevocationCache
	hasher  *hasher
	log     *slog.Logger
	now     func() time.Time

	accessTTL, refreshTTL, agentTTL time.Duration
}

// NewService returns a Service over the store, signing with tokens and
// refusing revoked access tokens through revoked.
func NewService(store Store, tokens Tokens, revoked RevocationCache, opts Options) *Service {
	s := &Service{
		store:      store,
		tokens:     tokens,
		revoked:    revoked,
		hasher:     newHasher(cmp.Or(opts.HashConcurrency, DefaultHashConcurrency)),
		log:        opts.Logger,
		now:        opts.Now,
		accessTTL:  cmp.Or(opts.AccessTTL, DefaultAccessTTL),
		refreshTTL: cmp.Or(opts.RefreshTTL, DefaultRefreshTTL),
		agentTTL:   cmp.Or(opts.AgentTTL, DefaultAgentTTL),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Register creates a user and signs it in. The email is trimmed and
// lower-cased; a blank display name becomes the email's local part. It
// returns ErrEmailTaken when the email is in use.
func (s *Service) Register(ctx context.Context, email, password, displayName string) (User, TokenPair, error) {
	email = normalizeEmail(email)
	displayName = strings.TrimSpace(displayName)
	if displayName == "" {
		displayName, _, _ = strings.Cut(email, "@")
	}
	hash, err := s.hasher.hash(ctx, password)
	if err != nil {
		return User{}, TokenPair{}, fmt.Errorf("hash password: %w", err)
	}
	u, err := s.store.CreateUser(ctx, User{ID: uuid.New(), Email: email, DisplayName: displayName}, hash)
	if err != nil {
		return User{}, TokenPair{}, fmt.Errorf("create user: %w", err)
	}
	pair, err := s.signIn(ctx, u.ID)
	if err != nil {
		return User{}, TokenPair{}, err
	}
	return u, pair, nil
}

// Login signs a user in with email and password. An unknown email and a
// wrong password give the same auth.ErrUnauthenticated, after the same work.
func (s *Service) Login(ctx context.Context, email, password string) (User, TokenPair, error) {
	u, hash, err := s.store.UserByEmail(ctx, normalizeEmail(email))
	switch {
	case errors.Is(err, ErrUserNotFound):
		// Spend the time a real check takes, so response times do not tell
		// which emails are registered.
		_, _ = s.hasher.verify(ctx, password, dummyPasswordHash)
		return User{}, TokenPair{}, auth.ErrUnauthenticated
	case err != nil:
		return User{}, TokenPair{}, fmt.Errorf("find user: %w", err)
	}
	ok, err := s.hasher.verify(ctx, password, hash)
	if err != nil {
		return User{}, TokenPair{}, fmt.Errorf("verify password: %w", err)
	}
	if !ok {
		return User{}, TokenPair{}, auth.ErrUnauthenticated
	}
	pair, err := s.signIn(ctx, u.ID)
	if err != nil {
		return User{}, TokenPair{}, err
	}
	return u, pair, nil
}

// signIn starts a refresh family for the user and returns its first pair.
func (s *Service) signIn(ctx context.Context, userID uuid.UUID) (TokenPair, error) {
	plain, hash, err := newSecret(refreshTokenPrefix)
	if err != nil {
		return TokenPair{}, err
	}
	now := s.now()
	rt := RefreshToken{
		ID:              uuid.New(),
		Hash:            hash,
		UserID:          userID,
		FamilyID:        uuid.New(),
		ExpiresAt:       now.Add(s.refreshTTL),
		AccessExpiresAt: now.Add(s.accessTTL),
	}
	if err := s.store.CreateRefreshToken(ctx, rt); err != nil {
		return TokenPair{}, fmt.Errorf("create refresh token: %w", err)
	}
	return s.pair(userID, rt.FamilyID, plain, rt.ExpiresAt)
}

// pair issues an access token from the family beside the refresh token.
// The store was told (AccessExpiresAt) that it expires by now+accessTTL,
// which holds as exp is rounded down to the second; a revocation is kept a
// few minutes past that for clock skew anyway.
func (s *Service) pair(userID, family uuid.UUID, refresh string, refreshExpiresAt time.Time) (TokenPair, error) {
	at, err := s.tokens.IssueAccess(userID, auth.KindUser, family, s.accessTTL)
	if err != nil {
		return TokenPair{}, fmt.Errorf("issue access token: %w", err)
	}
	return TokenPair{
		AccessToken:      at.Token,
		RefreshToken:     refresh,
		AccessExpiresAt:  at.ExpiresAt,
		RefreshExpiresAt: refreshExpiresAt,
	}, nil
}

// Refresh spends a refresh token and returns the next pair. An unknown,
// expired or spent token gives auth.ErrUnauthenticated; a spent one also
// revokes every token descended from the same login, access tokens
// included, on every replica.
func (s *Service) Refresh(ctx context.Context, refreshToken string) (TokenPair, error) {
	hash, ok := parseSecret(refreshTokenPrefix, refreshToken)
	if !ok {
		return TokenPair{}, auth.ErrUnauthenticated
	}
	plain, nextHash, err := newSecret(refreshTokenPrefix)
	if err != nil {
		return TokenPair{}, err
	}
	now := s.now()
	next := RefreshToken{ID: uuid.New(), Hash: nextHash, ExpiresAt: now.Add(s.refreshTTL), AccessExpiresAt: now.Add(s.accessTTL)}
	spent, err := s.store.RotateRefreshToken(ctx, hash, next, now)
	switch {
	case errors.Is(err, ErrRefreshTokenReused):
		s.log.WarnContext(ctx, "refresh token reused; family revoked",
			slog.String("user_id", spent.UserID.String()), slog.String("family_id", spent.FamilyID.String()))
		s.cacheFamilyRevocation(ctx, RevokedFamily{ID: spent.FamilyID, ExpiresAt: spent.AccessExpiresAt})
		return TokenPair{}, auth.ErrUnauthenticated
	case err != nil:
		return TokenPair{}, fmt.Errorf("rotate refresh token: %w", err)
	}
	return s.pair(spent.UserID, spent.FamilyID, plain, next.ExpiresAt)
}

// cacheFamilyRevocation copies a family revocation the store has recorded
// into the cache, which falls back to the store when this fails.
func (s *Service) cacheFamilyRevocation(ctx context.Context, f RevokedFamily) {
	if err := s.revoked.RevokeFamily(ctx, f.ID, f.ExpiresAt); err != nil {
		s.log.WarnContext(ctx, "cache refresh family revocation", slog.String("error", err.Error()))
	}
}

// Logout revokes the calling access token until it expires and, when a
// refresh token of the caller's is given, that token's whole family with
// the access tokens issued from it. A refresh token that is unknown or
// someone else's is ignored.
func (s *Service) Logout(ctx context.Context, p auth.Principal, refreshToken string) error {
	if p.TokenID == "" {
		return auth.ErrUnauthenticated
	}
	// The store is the record every replica falls back to, so it is written
	// first; the cache only makes the common check fast.
	if err := s.store.RevokeAccessToken(ctx, RevokedToken{ID: p.TokenID, ExpiresAt: p.ExpiresAt}); err != nil {
		return fmt.Errorf("revoke access token: %w", err)
	}
	if err := s.revoked.Revoke(ctx, p.TokenID, p.ExpiresAt); err != nil {
		s.log.WarnContext(ctx, "cache access token revocation", slog.String("error", err.Error()))
	}
	if refreshToken != "" && p.IsUser() {
		if hash, ok := parseSecret(refreshTokenPrefix, refreshToken); ok {
			f, ok, err := s.store.RevokeRefreshFamily(ctx, hash, p.ID, s.now())
			if err != nil {
				return fmt.Errorf("revoke refresh family: %w", err)
			}
			if ok {
				s.cacheFamilyRevocation(ctx, f)
			}
		}
	}
	return nil
}

// Pruned counts what PruneExpired deleted.
type Pruned struct {
	Revocations       int64
	FamilyRevocations int64
	RefreshTokens     int64
}

// PruneExpired deletes what no request can use any more, so the tables stay
// as large as the live sessions: access-token and family revocations whose
// tokens expired more than an hour ago, and refresh tokens expired more than a day
// ago with the families they leave empty. The store deletes in bounded
// batches, so a large backlog never holds long locks. Replicas may run it
// at once.
func (s *Service) PruneExpired(ctx context.Context) (Pruned, error) {
	var p Pruned
	now := s.now()
	var err error
	if p.Revocations, err = s.store.PruneRevokedAccessTokens(ctx, now.Add(-revocationPruneMargin)); err != nil {
		return p, fmt.Errorf("prune revoked access tokens: %w", err)
	}
	if p.FamilyRevocations, err = s.store.PruneRevokedFamilies(ctx, now.Add(-revocationPruneMargin)); err != nil {
		return p, fmt.Errorf("prune revoked families: %w", err)
	}
	if p.RefreshTokens, err = s.store.PruneRefreshTokens(ctx, now.Add(-refreshPruneMargin)); err != nil {
		return p, fmt.Errorf("prune refresh tokens: %w", err)
	}
	return p, nil
}

// Prune is PruneExpired logging what it did; it is the hourly job. Every
// replica runs it: the deletes are idempotent and batched, so replicas
// pruning at once neither clash nor hold long locks.
func (s *Service) Prune(ctx context.Context) {
	p, err := s.PruneExpired(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("prune expired tokens", slog.String("error", err.Error()))
	case p != (Pruned{}):
		s.log.Info("pruned expired tokens", slog.Int64("revocations", p.Revocations),
			slog.Int64("family_revocations", p.FamilyRevocations), slog.Int64("refresh_tokens", p.RefreshTokens))
	}
}

// Authenticate verifies a bearer access token and checks that it has not
// been revoked: VerifyAccessToken, then CheckRevoked. Any problem with the
// token gives auth.ErrUnauthenticated; other errors mean revocation could not
// be checked at all.
func (s *Service) Authenticate(ctx context.Context, bearer string) (auth.Principal, error) {
	p, err := s.VerifyAccessToken(bearer)
	if err != nil {
		return auth.Principal{}, err
	}
	if err := s.CheckRevoked(ctx, p); err != nil {
		return auth.Principal{}, err
	}
	return p, nil
}

// VerifyAccessToken checks a bearer access token's signature and claims,
// not its revocation: a caller must also call CheckRevoked before trusting
// the principal. It needs no I/O, so a caller may check revocation
// alongside other work. Any problem gives auth.ErrUnauthenticated.
func (s *Service) VerifyAccessToken(bearer string) (auth.Principal, error) {
	p, err := s.tokens.Verify(bearer)
	if err != nil {
		if errors.Is(err, auth.ErrUnauthenticated) {
			return auth.Principal{}, err
		}
		return auth.Principal{}, fmt.Errorf("%w: %w", auth.ErrUnauthenticated, err)
	}
	if p.TokenID == "" {
		// Without a jti the token could never be revoked.
		return auth.Principal{}, fmt.Errorf("%w: token has no id", auth.ErrUnauthenticated)
	}
	return p, nil
}

// CheckRevoked returns auth.ErrUnauthenticated if p's token, or the refresh
// family it was issued from, was revoked, and another error if revocation
// could not be checked at all.
func (s *Service) CheckRevoked(ctx context.Context, p auth.Principal) error {
	revoked, err := s.revoked.IsRevoked(ctx, p.TokenID, p.FamilyID)
	if err != nil {
		return fmt.Errorf("check revocation: %w", err)
	}
	if revoked {
		return fmt.Errorf("%w: token revoked", auth.ErrUnauthenticated)
	}
	return nil
}

// CreateAgentKey makes a new agent API key and returns it with its plaintext,
// which is not stored and cannot be shown again.
func (s *Service) CreateAgentKey(ctx context.Context, name string) (AgentKey, string, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return AgentKey{}, "", ErrInvalidAgentKeyName
	}
	plain, hash, err := newSecret(agentKeyPrefix)
	if err != nil {
		return AgentKey{}, "", err
	}
	k, err := s.store.CreateAgentKey(ctx, AgentKey{ID: uuid.New(), Name: name}, hash)
	if err != nil {
		return AgentKey{}, "", fmt.Errorf("create agent key: %w", err)
	}
	return k, plain, nil
}

// RevokeAgentKey stops the agent key with the id from being exchanged for
// new tokens; tokens already issued run out within the agent TTL. It returns
// ErrAgentKeyNotFound for an unknown id.
func (s *Service) RevokeAgentKey(ctx context.Context, id uuid.UUID) error {
	if err := s.store.RevokeAgentKey(ctx, id, s.now()); err != nil {
		return fmt.Errorf("revoke agent key: %w", err)
	}
	return nil
}

// ExchangeAgentKey trades an agent API key for a short-lived agent access
// token whose subject is the key's id. An unknown or revoked key gives
// auth.ErrUnauthenticated.
func (s *Service) ExchangeAgentKey(ctx context.Context, apiKey string) (AccessToken, error) {
	hash, ok := parseSecret(agentKeyPrefix, apiKey)
	if !ok {
		return AccessToken{}, auth.ErrUnauthenticated
	}
	k, err := s.store.AgentKeyByHash(ctx, hash)
	if err != nil {
		return AccessToken{}, fmt.Errorf("find agent key: %w", err)
	}
	if !k.RevokedAt.IsZero() {
		return AccessToken{}, fmt.Errorf("%w: agent key revoked", auth.ErrUnauthenticated)
	}
	at, err := s.tokens.IssueAccess(k.ID, auth.KindAgent, uuid.Nil, s.agentTTL)
	if err != nil {
		return AccessToken{}, fmt.Errorf("issue access token: %w", err)
	}
	return at, nil
}

// GetProfile returns the calling user. Agents get auth.ErrPermissionDenied.
func (s *Service) GetProfile(ctx context.Context, p auth.Principal) (User, error) {
	if !p.IsUser() {
		return User{}, auth.ErrPermissionDenied
	}
	u, err := s.store.User(ctx, p.ID)
	if err != nil {
		return User{}, fmt.Errorf("get user: %w", err)
	}
	return u, nil
}

// UpdateProfile changes the calling user's display name (trimmed; blank gives
// ErrInvalidDisplayName) and returns the user. Agents get
// auth.ErrPermissionDenied.
func (s *Service) UpdateProfile(ctx context.Context, p auth.Principal, displayName string) (User, error) {
	if !p.IsUser() {
		return User{}, auth.ErrPermissionDenied
	}
	displayName = strings.TrimSpace(displayName)
	if displayName == "" {
		return User{}, ErrInvalidDisplayName
	}
	u, err := s.store.UpdateDisplayName(ctx, p.ID, displayName, s.now())
	if err != nil {
		return User{}, fmt.Errorf("update user: %w", err)
	}
	return u, nil
}

func normalizeEmail(email string) string {
	return strings.ToLower(strings.TrimSpace(email))
}
