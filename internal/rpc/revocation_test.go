package rpc

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/token"
)

// revocationSource is a replica's view of PostgreSQL's revocations, which a
// test can take away: it then fails every check, and counts them.
type revocationSource struct {
	*postgres.AccountStore
	down   atomic.Bool
	checks atomic.Int64
}

func (s *revocationSource) IsAccessTokenRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error) {
	s.checks.Add(1)
	if s.down.Load() {
		return false, errors.New("postgres unreachable")
	}
	return s.AccountStore.IsAccessTokenRevoked(ctx, jti, family)
}

// accountReplica is one replica of the API, with its own Valkey client and
// revocation cache, whose view of PostgreSQL's revocations the test holds.
type accountReplica struct {
	src     *revocationSource
	cache   *revocation.Cache
	auth    parleyv1connect.AuthServiceClient
	clients map[string]parleyv1connect.UserServiceClient
}

// newAccountReplica is a replica on the database, Valkey (with keys under
// prefix) and token keys given.
func newAccountReplica(t *testing.T, dbURL, valkeyURL, prefix string, tokens *token.Manager) *accountReplica {
	t.Helper()
	r := &accountReplica{}
	a := newTestAPI(t, apiOptions{
		handler: Options{Logger: slog.New(slog.NewTextHandler(t.Output(), nil)), MaxRequestBytes: 1 << 20},
		dbURL:   dbURL, valkeyURL: valkeyURL, prefix: prefix, tokens: tokens,
		revocations: func(s *postgres.AccountStore) revocation.Source {
			r.src = &revocationSource{AccountStore: s}
			return r.src
		},
	})
	r.cache = a.revoked
	r.auth = parleyv1connect.NewAuthServiceClient(a.hc, a.url)
	r.clients = clients(a, parleyv1connect.NewUserServiceClient)
	return r
}

// profileCode is the code GetProfile answers with the access token over
// each protocol, or "" when they disagree.
func (r *accountReplica) profileCode(t *testing.T, access string) connect.Code {
	t.Helper()
	var codes []connect.Code
	for name, c := range r.clients {
		req := connect.NewRequest(&parleyv1.GetProfileRequest{})
		req.Header().Set("Authorization", "Bearer "+access)
		_, err := c.GetProfile(t.Context(), req)
		if codeOf(err) == connect.CodeInternal || codeOf(err) == connect.CodeUnknown {
			t.Logf("%s: %v", name, err)
		}
		codes = append(codes, codeOf(err))
	}
	for _, c := range codes[1:] {
		if c != codes[0] {
			t.Errorf("protocols disagree: %v", codes)
		}
	}
	return codes[0]
}

// TestRefreshReuseRevokesAccessTokensOnEveryReplica checks that reusing a
// spent refresh token on one replica makes every access token issued from
// its family, the earliest included, unauthenticated on another replica:
// from Valkey alone while PostgreSQL cannot answer, and from PostgreSQL once
// Valkey has lost its keys.
func TestRefreshReuseRevokesAccessTokensOnEveryReplica(t *testing.T) {
	t.Parallel()
	dbURL, tokens := testenv.DatabaseURL(t), newTestTokens(t)
	v := testenv.NewValkey(t)
	prefix := "test:" + uuid.NewString() + ":"
	a := newAccountReplica(t, dbURL, v.URL(), prefix, tokens)
	b := newAccountReplica(t, dbURL, v.URL(), prefix, tokens)
	ctx := t.Context()

	email := uuid.NewString() + "@example.com"
	reg, err := a.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: email, Password: "correct horse battery"}))
	if err != nil {
		t.Fatal(err)
	}
	first := reg.Msg.GetTokens()
	login, err := a.auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Email: email, Password: "correct horse battery"}))
	if err != nil {
		t.Fatal(err)
	}
	otherSession := login.Msg.GetTokens().GetAccessToken()
	refreshed, err := a.auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()}))
	if err != nil {
		t.Fatal(err)
	}
	second := refreshed.Msg.GetTokens()
	if err := b.cache.Warm(ctx); err != nil {
		t.Fatal(err)
	}
	for _, at := range []string{first.GetAccessToken(), second.GetAccessToken(), otherSession} {
		if code := b.profileCode(t, at); code != 0 {
			t.Fatalf("before the reuse: %v", code)
		}
	}

	_, err = a.auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()}))
	if codeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("reuse of a spent refresh token: %v, want unauthenticated", err)
	}

	// checkB checks, on replica b, that the family's access tokens are
	// refused and the other session's accepted, and returns how often b
	// asked PostgreSQL.
	checkB := func(t *testing.T) int64 {
		t.Helper()
		before := b.src.checks.Load()
		for i, at := range []string{first.GetAccessToken(), second.GetAccessToken()} {
			if code := b.profileCode(t, at); code != connect.CodeUnauthenticated {
				t.Errorf("access token %d of the reused family: %v, want unauthenticated", i, code)
			}
		}
		if code := b.profileCode(t, otherSession); code != 0 {
			t.Errorf("the other session: %v", code)
		}
		return b.src.checks.Load() - before
	}
	t.Run("postgres down", func(t *testing.T) {
		b.src.down.Store(true)
		defer b.src.down.Store(false)
		if n := checkB(t); n != 0 {
			t.Errorf("the revocation check asked PostgreSQL %d times with a warm cache", n)
		}
	})
	t.Run("valkey flushed", func(t *testing.T) {
		v.Flush()
		if checkB(t) == 0 {
			t.Error("after a flush the revocation check did not ask PostgreSQL")
		}
	})
}
