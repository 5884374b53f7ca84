package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// source is the PostgreSQL store, counting the checks that reach it and
// optionally running a hook in the middle of a warm-up's read.
type source struct {
	*postgres.AccountStore
	checks     atomic.Int64
	duringWarm func()
}

func (s *source) IsAccessTokenRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error) {
	s.checks.Add(1)
	return s.AccountStore.IsAccessTokenRevoked(ctx, jti, family)
}

func (s *source) RevokedAccessTokens(ctx context.Context, now time.Time) ([]account.RevokedToken, error) {
	toks, err := s.AccountStore.RevokedAccessTokens(ctx, now)
	if s.duringWarm != nil {
		s.duringWarm()
	}
	return toks, err
}

type fixture struct {
	src    *source
	cache  *revocation.Cache
	client valkey.Client
	prefix string
}

func newFixture(t *testing.T, valkeyURL string) *fixture {
	t.Helper()
	f := &fixture{
		src:    &source{AccountStore: postgres.NewAccountStore(testenv.DB(t))},
		client: testenv.ValkeyClient(t, valkeyURL),
		prefix: "test:" + uuid.NewString() + ":",
	}
	f.cache = f.replica(t)
	return f
}

// replica returns another Cache over the same keys with a Valkey client of
// its own, as a second replica of Parley has.
func (f *fixture) replica(t *testing.T) *revocation.Cache {
	t.Helper()
	c := revocation.New(f.client, f.src, revocation.Options{
		KeyPrefix: f.prefix,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	t.Cleanup(c.Close)
	return c
}

// revoke records a revocation the way account.Service does: store, then cache.
func (f *fixture) revoke(t *testing.T, jti string, exp time.Time) error {
	t.Helper()
	if err := f.src.RevokeAccessToken(t.Context(), account.RevokedToken{ID: jti, ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	return f.cache.Revoke(t.Context(), jti, exp)
}

func (f *fixture) isRevoked(t *testing.T, jti string) bool {
	t.Helper()
	return f.isFamilyRevoked(t, jti, uuid.Nil)
}

func (f *fixture) isFamilyRevoked(t *testing.T, jti string, family uuid.UUID) bool {
	t.Helper()
	revoked, err := f.cache.IsRevoked(t.Context(), jti, family)
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", jti, err)
	}
	return revoked
}

func (f *fixture) exists(t *testing.T, key string) bool {
	t.Helper()
	n, err := f.client.Do(t.Context(), f.client.B().Exists().Key(f.prefix+key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func (f *fixture) waitMarker(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f.exists(t, "loaded") {
		f.isRevoked(t, "probe") // traffic: what starts a warm-up
		if time.Now().After(deadline) {
			t.Fatal("marker not set by the background warm-up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWarmCacheAnswersWithoutSource(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testenv.ValkeyURL(t))
	exp := time.Now().Add(time.Hour)
	if err := f.revoke(t, "before-warm", exp); err != nil {
		t.Fatal(err)
	}
	// Expired revocations are not worth copying.
	if err := f.src.RevokeAccessToken(t.Context(), account.RevokedToken{ID: "expired", ExpiresAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// Verifiers accept a token a little past exp, so its revocation stays.
	if err := f.src.RevokeAccessToken(t.Context(), account.RevokedToken{ID: "just-expired", ExpiresAt: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Warm(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f.exists(t, "expired") {
		t.Error("Warm copied an expired revocation")
	}
	if err := f.revoke(t, "after-warm", exp); err != nil {
		t.Fatal(err)
	}

	for jti, want := range map[string]bool{"before-warm": true, "after-warm": true, "just-expired": true, "never-revoked": false} {
		if got := f.isRevoked(t, jti); got != want {
			t.Errorf("IsRevoked(%q) = %v, want %v", jti, got, want)
		}
	}
	if n := f.src.checks.Load(); n != 0 {
		t.Errorf("a warm cache asked the source %d times", n)
	}

	pttl, err := f.client.Do(t.Context(), f.client.B().Pttl().Key(f.prefix+"after-warm").Build()).AsInt64()
	// Kept a little past exp, for the verifiers' clock-skew leeway.
	if err != nil || pttl <= time.Hour.Milliseconds() || pttl > (time.Hour+10*time.Minute).Milliseconds() {
		t.Errorf("revocation key PTTL = %d, %v; want it to expire shortly after the token", pttl, err)
	}
}

func TestMissingMarkerFallsBackAndWarms(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testenv.ValkeyURL(t))
	exp := time.Now().Add(time.Hour)
	// Recorded in the source only, as when the cache write was lost.
	if err := f.src.RevokeAccessToken(t.Context(), account.RevokedToken{ID: "lost", ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	if !f.isRevoked(t, "lost") {
		t.Fatal("revocation known only to the source was accepted")
	}
	if f.isRevoked(t, "other") {
		t.Fatal("unrevoked token refused")
	}
	// The first check surely found no marker; the second may already have
	// found the background warm-up done.
	if n := f.src.checks.Load(); n < 1 {
		t.Errorf("source asked %d times without a marker", n)
	}
	f.waitMarker(t)
	if !f.exists(t, "lost") {
		t.Error("warm-up did not copy the revocation")
	}
	before := f.src.checks.Load()
	if !f.isRevoked(t, "lost") || f.isRevoked(t, "other") {
		t.Error("wrong answers after the warm-up")
	}
	if n := f.src.checks.Load() - before; n != 0 {
		t.Errorf("source asked %d times after the warm-up, want 0", n)
	}
}

// TestFlushDuringWarmLeavesNoMarker checks that a warm-up interrupted by a
// flush does not vouch for a cache that lost keys under it.
func TestFlushDuringWarmLeavesNoMarker(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	f := newFixture(t, v.URL())
	if err := f.revoke(t, "jti", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	f.src.duringWarm = v.Flush
	if err := f.cache.Warm(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f.exists(t, "loaded") {
		t.Fatal("marker set although Valkey was flushed during the warm-up")
	}
	f.src.duringWarm = nil
	if err := f.cache.Warm(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !f.exists(t, "loaded") || !f.exists(t, "jti") {
		t.Fatal("undisturbed warm-up did not complete")
	}
}

func TestValkeyDown(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	f := newFixture(t, v.URL())
	exp := time.Now().Add(time.Hour)
	if err := f.cache.Warm(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := f.revoke(t, "before", exp); err != nil {
		t.Fatal(err)
	}
	v.Stop()

	start := time.Now()
	if !f.isRevoked(t, "before") || f.isRevoked(t, "other") {
		t.Fatal("wrong answers from the source while Valkey is down")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("two checks with Valkey down took %s", took)
	}
	// The revocation is durable in the source; the cache reports its failure.
	if err := f.revoke(t, "during", exp); err == nil {
		t.Error("Revoke with Valkey down reported success")
	}
	if !f.isRevoked(t, "during") {
		t.Fatal("revocation made while Valkey was down was accepted")
	}

	v.Start() // empty: no marker, so the source answers until warmed
	if !f.isRevoked(t, "during") || !f.isRevoked(t, "before") {
		t.Fatal("revocation accepted after Valkey came back empty")
	}
	f.waitMarker(t)
	if !f.exists(t, "during") || !f.exists(t, "before") {
		t.Error("warm-up after the restart did not copy the revocations")
	}
}

func TestSourceDownToo(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	db := testenv.DB(t)
	client := testenv.ValkeyClient(t, v.URL())
	cache := revocation.New(client, postgres.NewAccountStore(db), revocation.Options{KeyPrefix: "test:" + uuid.NewString() + ":"})
	t.Cleanup(cache.Close)
	v.Stop()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Fail closed: an error, never "not revoked".
	if _, err := cache.IsRevoked(t.Context(), "jti", uuid.New()); err == nil {
		t.Fatal("IsRevoked answered with neither Valkey nor the database")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := cache.IsRevoked(ctx, "jti", uuid.Nil); !errors.Is(err, context.Canceled) {
		t.Errorf("IsRevoked with a cancelled context: got %v", err)
	}
}

// twoReplicas returns the fixtures of two replicas sharing a private Valkey
// and the source, the cache warmed.
func twoReplicas(t *testing.T, v *testenv.Valkey) (a, b *fixture) {
	t.Helper()
	a = newFixture(t, v.URL())
	if err := a.cache.Warm(t.Context()); err != nil {
		t.Fatal(err)
	}
	b = &fixture{src: a.src, client: testenv.ValkeyClient(t, v.URL()), prefix: a.prefix}
	b.cache = b.replica(t)
	return a, b
}

// TestRevokeReachesOtherReplicasAtOnce checks that a replica which has just
// found a token not revoked refuses it as soon as another replica's Revoke
// returns: no replica may keep an answer of its own (a client-side cache
// with pushed invalidations would not do: the push can arrive after the
// next request).
func TestRevokeReachesOtherReplicasAtOnce(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	a, b := twoReplicas(t, v)
	exp := time.Now().Add(time.Hour)
	for i := range 50 {
		jti := fmt.Sprintf("jti-%d", i)
		for range 3 {
			if b.isRevoked(t, jti) {
				t.Fatalf("%s refused before it was revoked", jti)
			}
		}
		if err := a.revoke(t, jti, exp); err != nil {
			t.Fatal(err)
		}
		if !b.isRevoked(t, jti) {
			t.Fatalf("replica b accepted %s after replica a revoked it", jti)
		}
	}
	if n := a.src.checks.Load(); n != 0 {
		t.Errorf("the source was asked %d times with a warm cache", n)
	}

	// A flush drops the marker: b must ask the source again.
	v.Flush()
	before := a.src.checks.Load()
	if b.isRevoked(t, "jti-new") {
		t.Fatal("unrevoked token refused")
	}
	if a.src.checks.Load() == before {
		t.Error("after a flush the check did not ask the source")
	}
}

// revokeFamily records a family revocation the way account.Service does:
// the store (through a refresh token of the family), then the cache.
func (f *fixture) revokeFamily(t *testing.T, accessExp time.Time) (uuid.UUID, error) {
	t.Helper()
	ctx := t.Context()
	u, err := f.src.CreateUser(ctx, account.User{ID: uuid.New(), Email: uuid.NewString() + "@example.com", DisplayName: "x"}, "h")
	if err != nil {
		t.Fatal(err)
	}
	rt := account.RefreshToken{ID: uuid.New(), Hash: []byte(uuid.NewString()), UserID: u.ID, FamilyID: uuid.New(),
		ExpiresAt: time.Now().Add(time.Hour), AccessExpiresAt: accessExp}
	if err := f.src.CreateRefreshToken(ctx, rt); err != nil {
		t.Fatal(err)
	}
	rf, ok, err := f.src.RevokeRefreshFamily(ctx, rt.Hash, u.ID, time.Now())
	if err != nil || !ok {
		t.Fatalf("RevokeRefreshFamily = %v, %v", ok, err)
	}
	return rf.ID, f.cache.RevokeFamily(ctx, rf.ID, rf.ExpiresAt)
}

// TestFamilyRevocation checks that a revoked family's tokens are refused by
// every replica: from Valkey alone while the cache is complete, from the
// source once Valkey has lost the keys, and from Valkey again once warmed.
func TestFamilyRevocation(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	a, b := twoReplicas(t, v)
	live := uuid.New()
	family, err := a.revokeFamily(t, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		if !b.isFamilyRevoked(t, "any-jti", family) {
			t.Errorf("%s: a token of the revoked family was accepted", what)
		}
		if b.isFamilyRevoked(t, "any-jti", live) || b.isFamilyRevoked(t, "any-jti", uuid.Nil) {
			t.Errorf("%s: a token of another family was refused", what)
		}
	}
	check("warm cache")
	if n := a.src.checks.Load(); n != 0 {
		t.Errorf("a warm cache asked the source %d times", n)
	}
	pttl, err := b.client.Do(t.Context(), b.client.B().Pttl().Key(b.prefix+"family:"+family.String()).Build()).AsInt64()
	if err != nil || pttl <= time.Hour.Milliseconds() || pttl > (time.Hour+10*time.Minute).Milliseconds() {
		t.Errorf("family key PTTL = %d, %v; want it to expire shortly after the family's last access token", pttl, err)
	}

	v.Flush()
	check("flushed")
	if a.src.checks.Load() == 0 {
		t.Error("after a flush the source was not asked")
	}
	b.waitMarker(t)
	if !b.exists(t, "family:"+family.String()) {
		t.Error("the warm-up did not copy the family revocation")
	}
	before := a.src.checks.Load()
	check("warmed again")
	if n := a.src.checks.Load() - before; n != 0 {
		t.Errorf("the source was asked %d times after the warm-up", n)
	}
}
