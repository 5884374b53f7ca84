package account_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/token"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// tokens adapts token.Manager to account.Tokens, as cmd/parley does.
type tokens struct{ m *token.Manager }

func (t tokens) IssueAccess(sub uuid.UUID, kind auth.Kind, family uuid.UUID, ttl time.Duration) (account.AccessToken, error) {
	i, err := t.m.IssueInFamily(sub, kind, family, ttl)
	return account.AccessToken(i), err
}

func (t tokens) Verify(s string) (auth.Principal, error) { return t.m.Verify(s) }

type env struct {
	svc    *account.Service
	store  *postgres.AccountStore
	cache  *revocation.Cache
	valkey valkey.Client
	prefix string
}

// newEnv wires a Service over a fresh database, a real token manager and a
// revocation cache on valkeyURL (the shared server unless a test needs its
// own), with keys unique to the test.
func newEnv(t *testing.T, valkeyURL string) *env {
	t.Helper()
	keys, err := token.GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	set, err := token.ParseKeySet(keys)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := token.NewManager(set, token.Options{Issuer: "parley-test", Audience: "parley-test"})
	if err != nil {
		t.Fatal(err)
	}
	if valkeyURL == "" {
		valkeyURL = testenv.ValkeyURL(t)
	}
	e := &env{
		store:  postgres.NewAccountStore(testenv.DB(t)),
		valkey: testenv.ValkeyClient(t, valkeyURL),
		prefix: "test:" + uuid.NewString() + ":revoked:",
	}
	e.cache = revocation.New(e.valkey, e.store, revocation.Options{KeyPrefix: e.prefix, Logger: testLogger(t)})
	t.Cleanup(e.cache.Close)
	e.svc = account.NewService(e.store, tokens{mgr}, e.cache, account.Options{Logger: testLogger(t)})
	return e
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func (e *env) register(t *testing.T, email string) (account.User, account.TokenPair) {
	t.Helper()
	u, pair, err := e.svc.Register(t.Context(), email, "correct horse battery", "")
	if err != nil {
		t.Fatalf("Register(%q): %v", email, err)
	}
	return u, pair
}

func (e *env) mustAuthenticate(t *testing.T, bearer string) auth.Principal {
	t.Helper()
	p, err := e.svc.Authenticate(t.Context(), bearer)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	return p
}

func (e *env) mustRefuse(t *testing.T, bearer string) {
	t.Helper()
	if _, err := e.svc.Authenticate(t.Context(), bearer); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Authenticate: got %v, want ErrUnauthenticated", err)
	}
}

// waitWarm keeps checking tokens, as traffic would, until a background
// warm-up has set the marker again.
func (e *env) waitWarm(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.cache.IsRevoked(t.Context(), "probe", uuid.Nil); err != nil {
			t.Fatal(err)
		}
		n, err := e.valkey.Do(t.Context(), e.valkey.B().Exists().Key(e.prefix+"loaded").Build()).AsInt64()
		if err == nil && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("revocation cache not warmed again (exists=%d, err=%v)", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRegisterAndLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()

	u, pair, err := e.svc.Register(ctx, "  Ada.Lovelace@Example.COM ", "correct horse battery", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "ada.lovelace@example.com" || u.DisplayName != "ada.lovelace" || u.ID == uuid.Nil || u.CreatedAt.IsZero() {
		t.Errorf("Register user = %+v", u)
	}
	if p := e.mustAuthenticate(t, pair.AccessToken); p.ID != u.ID || p.Kind != auth.KindUser {
		t.Errorf("access token principal = %+v, want user %s", p, u.ID)
	}
	if !strings.HasPrefix(pair.RefreshToken, "prt_") || !pair.RefreshExpiresAt.After(pair.AccessExpiresAt) {
		t.Errorf("pair = %+v", pair)
	}

	if _, _, err := e.svc.Register(ctx, "ADA.LOVELACE@example.com", "another password", "Ada"); !errors.Is(err, account.ErrEmailTaken) {
		t.Errorf("Register with the same email in other case: got %v, want ErrEmailTaken", err)
	}

	got, pair2, err := e.svc.Login(ctx, "Ada.Lovelace@example.com ", "correct horse battery")
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	if got != u {
		t.Errorf("Login user = %+v, want %+v", got, u)
	}
	e.mustAuthenticate(t, pair2.AccessToken)

	start := time.Now()
	_, _, wrongPassword := e.svc.Login(ctx, "ada.lovelace@example.com", "wrong password")
	wrongTook := time.Since(start)
	start = time.Now()
	_, _, unknownEmail := e.svc.Login(ctx, "nobody@example.com", "wrong password")
	unknownTook := time.Since(start)
	for _, err := range []error{wrongPassword, unknownEmail} {
		if !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("Login: got %v, want ErrUnauthenticated", err)
		}
	}
	if wrongPassword.Error() != unknownEmail.Error() {
		t.Errorf("wrong password says %q, unknown email says %q", wrongPassword, unknownEmail)
	}
	// Both run one argon2id hash; only gross differences (no hash at all)
	// are asserted, so a busy machine does not make this flaky.
	if unknownTook < wrongTook/4 {
		t.Errorf("unknown email answered in %s, wrong password in %s", unknownTook, wrongTook)
	}
}

func TestRefreshRotatesAndReuseRevokesFamily(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()
	u, first := e.register(t, "rotate@example.com")
	// A second sign-in is a separate family and must survive the reuse below.
	_, other, err := e.svc.Login(ctx, "rotate@example.com", "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}

	second, err := e.svc.Refresh(ctx, first.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if second.RefreshToken == first.RefreshToken {
		t.Fatal("Refresh returned the same refresh token")
	}
	if p := e.mustAuthenticate(t, second.AccessToken); p.ID != u.ID {
		t.Errorf("refreshed access token is for %s, want %s", p.ID, u.ID)
	}
	third, err := e.svc.Refresh(ctx, second.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh of the child: %v", err)
	}

	// Replaying a spent token: refused, and the newest token of the family
	// (which the thief or the victim holds) is dead too.
	if _, err := e.svc.Refresh(ctx, first.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Refresh of a spent token: got %v, want ErrUnauthenticated", err)
	}
	if _, err := e.svc.Refresh(ctx, third.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Refresh of the newest token after reuse: got %v, want ErrUnauthenticated", err)
	}
	// So are the access tokens issued from the family, the first included.
	for i, at := range []string{first.AccessToken, second.AccessToken, third.AccessToken} {
		if _, err := e.svc.Authenticate(ctx, at); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("access token %d of the reused family: got %v, want ErrUnauthenticated", i, err)
		}
	}
	e.mustAuthenticate(t, other.AccessToken)
	if _, err := e.svc.Refresh(ctx, other.RefreshToken); err != nil {
		t.Fatalf("Refresh in another family: %v", err)
	}

	for _, bad := range []string{"", "prt_short", "nonsense", "prt_" + strings.Repeat("A", 43)} {
		if _, err := e.svc.Refresh(ctx, bad); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("Refresh(%q): got %v, want ErrUnauthenticated", bad, err)
		}
	}
}

func TestRefreshExpired(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	now := time.Now()
	clock := func() time.Time { return now }
	keys, _ := token.GenerateKeySet()
	set, _ := token.ParseKeySet(keys)
	mgr, err := token.NewManager(set, token.Options{Issuer: "i", Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	svc := account.NewService(e.store, tokens{mgr}, e.cache, account.Options{RefreshTTL: time.Hour, Now: clock})
	_, pair, err := svc.Register(t.Context(), "expiry@example.com", "correct horse battery", "")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour + time.Second)
	if _, err := svc.Refresh(t.Context(), pair.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Refresh of an expired token: got %v, want ErrUnauthenticated", err)
	}
}

func TestConcurrentRefreshOfOneToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	_, pair := e.register(t, "race@example.com")

	const n = 4
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []account.TokenPair
	)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			next, err := e.svc.Refresh(t.Context(), pair.RefreshToken)
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, next)
				mu.Unlock()
			case !errors.Is(err, auth.ErrUnauthenticated):
				t.Errorf("Refresh: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(winners) > 1 {
		t.Fatalf("%d concurrent refreshes of one token succeeded, want at most 1", len(winners))
	}
	// The losers presented a spent token, so the family is revoked: even the
	// winner's new token is refused.
	for _, w := range winners {
		if _, err := e.svc.Refresh(t.Context(), w.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("Refresh of the winner's token: got %v, want ErrUnauthenticated", err)
		}
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()
	_, pair := e.register(t, "leaving@example.com")
	_, stranger := e.register(t, "stranger@example.com")
	other, err := e.svc.Refresh(ctx, pair.RefreshToken) // same family, newer token
	if err != nil {
		t.Fatal(err)
	}

	p := e.mustAuthenticate(t, other.AccessToken)
	// Someone else's refresh token is ignored, not revoked.
	if err := e.svc.Logout(ctx, p, stranger.RefreshToken); err != nil {
		t.Fatalf("Logout: %v", err)
	}
	e.mustRefuse(t, other.AccessToken)
	e.mustAuthenticate(t, pair.AccessToken) // only the calling token is revoked
	if _, err := e.svc.Refresh(ctx, stranger.RefreshToken); err != nil {
		t.Fatalf("stranger's Refresh after someone else's Logout: %v", err)
	}

	// A third access token of the family, not the caller's: it goes with
	// the family.
	third, err := e.svc.Refresh(ctx, other.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	p = e.mustAuthenticate(t, pair.AccessToken)
	if err := e.svc.Logout(ctx, p, third.RefreshToken); err != nil {
		t.Fatalf("Logout: %v", err)
	}
	e.mustRefuse(t, pair.AccessToken)
	e.mustRefuse(t, third.AccessToken)
	e.mustAuthenticate(t, stranger.AccessToken)
	if _, err := e.svc.Refresh(ctx, third.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Refresh after Logout: got %v, want ErrUnauthenticated", err)
	}
}

// TestRevokedTokenSurvivesValkeyLoss checks that a logged-out token stays
// refused whatever happens to Valkey, and that the cache heals afterwards.
func TestRevokedTokenSurvivesValkeyLoss(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	e := newEnv(t, v.URL())
	ctx := t.Context()
	_, revoked := e.register(t, "revoked@example.com")
	_, live := e.register(t, "live@example.com")
	// Warm first, so the checks below start from the steady state.
	if err := e.cache.Warm(ctx); err != nil {
		t.Fatal(err)
	}
	rp := e.mustAuthenticate(t, revoked.AccessToken)
	if err := e.svc.Logout(ctx, rp, ""); err != nil {
		t.Fatal(err)
	}
	e.mustRefuse(t, revoked.AccessToken)
	e.mustAuthenticate(t, live.AccessToken)

	t.Run("flushed", func(t *testing.T) {
		v.Flush()
		e.mustRefuse(t, revoked.AccessToken)
		e.mustAuthenticate(t, live.AccessToken)
		e.waitWarm(t)
		n, err := e.valkey.Do(ctx, e.valkey.B().Exists().Key(e.prefix+rp.TokenID).Build()).AsInt64()
		if err != nil || n != 1 {
			t.Fatalf("revocation not copied back into Valkey (exists=%d, err=%v)", n, err)
		}
		e.mustRefuse(t, revoked.AccessToken)
	})
	t.Run("restarted empty", func(t *testing.T) {
		v.Stop()
		v.Start()
		e.mustRefuse(t, revoked.AccessToken)
		e.mustAuthenticate(t, live.AccessToken)
		e.waitWarm(t)
		e.mustRefuse(t, revoked.AccessToken)
	})
	t.Run("unreachable", func(t *testing.T) {
		v.Stop()
		e.mustRefuse(t, revoked.AccessToken)
		e.mustAuthenticate(t, live.AccessToken)

		// Logging out while Valkey is down still revokes, everywhere.
		_, later := e.register(t, "later@example.com")
		if err := e.svc.Logout(ctx, e.mustAuthenticate(t, later.AccessToken), ""); err != nil {
			t.Fatalf("Logout with Valkey down: %v", err)
		}
		e.mustRefuse(t, later.AccessToken)
		v.Start()
		e.mustRefuse(t, later.AccessToken)
		e.mustRefuse(t, revoked.AccessToken)
		e.mustAuthenticate(t, live.AccessToken)
	})
}

func TestAgentKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()

	if _, _, err := e.svc.CreateAgentKey(ctx, "   "); !errors.Is(err, account.ErrInvalidAgentKeyName) {
		t.Errorf("CreateAgentKey with a blank name: got %v", err)
	}
	key, plain, err := e.svc.CreateAgentKey(ctx, " transcriber ")
	if err != nil {
		t.Fatal(err)
	}
	if key.Name != "transcriber" || key.ID == uuid.Nil || !strings.HasPrefix(plain, "pk_agent_") {
		t.Errorf("CreateAgentKey = %+v, %q", key, plain)
	}

	at, err := e.svc.ExchangeAgentKey(ctx, plain)
	if err != nil {
		t.Fatalf("ExchangeAgentKey: %v", err)
	}
	if ttl := at.ExpiresAt.Sub(at.IssuedAt); ttl != account.DefaultAgentTTL {
		t.Errorf("agent token lives %s, want %s", ttl, account.DefaultAgentTTL)
	}
	p := e.mustAuthenticate(t, at.Token)
	if p.Kind != auth.KindAgent || p.ID != key.ID || p.TokenID != at.ID {
		t.Errorf("agent principal = %+v, want agent %s", p, key.ID)
	}
	if _, err := e.svc.GetProfile(ctx, p); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("GetProfile as agent: got %v, want ErrPermissionDenied", err)
	}
	if _, err := e.svc.UpdateProfile(ctx, p, "Robot"); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("UpdateProfile as agent: got %v, want ErrPermissionDenied", err)
	}

	for _, bad := range []string{"", "pk_agent_", plain + "x", strings.Replace(plain, "pk_agent_", "prt_", 1), "pk_agent_" + strings.Repeat("A", 43)} {
		if _, err := e.svc.ExchangeAgentKey(ctx, bad); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("ExchangeAgentKey(%q): got %v, want ErrUnauthenticated", bad, err)
		}
	}

	// Agents log out like users.
	if err := e.svc.Logout(ctx, p, ""); err != nil {
		t.Fatal(err)
	}
	e.mustRefuse(t, at.Token)

	if err := e.svc.RevokeAgentKey(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ExchangeAgentKey(ctx, plain); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("ExchangeAgentKey with a revoked key: got %v, want ErrUnauthenticated", err)
	}
	if err := e.svc.RevokeAgentKey(ctx, uuid.New()); !errors.Is(err, account.ErrAgentKeyNotFound) {
		t.Errorf("RevokeAgentKey of an unknown key: got %v", err)
	}
}

func TestProfile(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()
	u, pair := e.register(t, "grace@example.com")
	p := e.mustAuthenticate(t, pair.AccessToken)

	got, err := e.svc.GetProfile(ctx, p)
	if err != nil || got != u {
		t.Fatalf("GetProfile = %+v, %v; want %+v", got, err, u)
	}
	updated, err := e.svc.UpdateProfile(ctx, p, "  Grace Hopper ")
	if err != nil {
		t.Fatal(err)
	}
	if updated.DisplayName != "Grace Hopper" || updated.ID != u.ID || updated.Email != u.Email {
		t.Errorf("UpdateProfile = %+v", updated)
	}
	if got, _ := e.svc.GetProfile(ctx, p); got.DisplayName != "Grace Hopper" {
		t.Errorf("GetProfile after update = %+v", got)
	}
	if _, err := e.svc.UpdateProfile(ctx, p, " \t "); !errors.Is(err, account.ErrInvalidDisplayName) {
		t.Errorf("UpdateProfile with a blank name: got %v, want ErrInvalidDisplayName", err)
	}
	gone := auth.Principal{ID: uuid.New(), Kind: auth.KindUser}
	if _, err := e.svc.GetProfile(ctx, gone); !errors.Is(err, account.ErrUserNotFound) {
		t.Errorf("GetProfile of a missing user: got %v, want ErrUserNotFound", err)
	}
}

// pruneService is a Service with 10-minute access and one-hour refresh
// tokens on the clock *now.
func pruneService(t *testing.T, e *env, now *time.Time, log *slog.Logger) *account.Service {
	t.Helper()
	keys, _ := token.GenerateKeySet()
	set, _ := token.ParseKeySet(keys)
	mgr, err := token.NewManager(set, token.Options{Issuer: "i", Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	return account.NewService(e.store, tokens{mgr}, e.cache, account.Options{
		AccessTTL: 10 * time.Minute, RefreshTTL: time.Hour, Now: func() time.Time { return *now }, Logger: log,
	})
}

func TestPruneExpired(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()
	start := time.Now()
	now := start
	svc := pruneService(t, e, &now, nil)
	_, old, err := svc.Register(ctx, "old@example.com", "correct horse battery", "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.Authenticate(ctx, old.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	// Logging out with the refresh token revokes the family too, until its
	// access token has expired.
	if err := svc.Logout(ctx, p, old.RefreshToken); err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		at   time.Duration
		want account.Pruned
	}{
		// The revoked access token expired 20 minutes ago: within the
		// clock-skew margin, kept.
		{30 * time.Minute, account.Pruned{}},
		{2 * time.Hour, account.Pruned{Revocations: 1, FamilyRevocations: 1}},
		// The refresh token expired 23 hours ago: kept for a day.
		{24 * time.Hour, account.Pruned{}},
		{25*time.Hour + time.Minute, account.Pruned{RefreshTokens: 1}},
	} {
		now = start.Add(step.at)
		if got, err := svc.PruneExpired(ctx); err != nil || got != step.want {
			t.Fatalf("PruneExpired %v after start = %+v, %v; want %+v", step.at, got, err, step.want)
		}
	}

	// A session that is still live is left alone.
	_, fresh, err := svc.Register(ctx, "fresh@example.com", "correct horse battery", "")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := svc.PruneExpired(ctx); err != nil || got != (account.Pruned{}) {
		t.Fatalf("PruneExpired with only a live session = %+v, %v", got, err)
	}
	if _, err := svc.Refresh(ctx, fresh.RefreshToken); err != nil {
		t.Fatalf("Refresh of the live session: %v", err)
	}
	if _, err := svc.Refresh(ctx, old.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Refresh of the pruned token: got %v, want ErrUnauthenticated", err)
	}
}

func TestPruneLogsWhatItDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := t.Context()
	start := time.Now()
	now := start
	var logs bytes.Buffer
	svc := pruneService(t, e, &now, slog.New(slog.NewTextHandler(&logs, nil)))
	_, pair, err := svc.Register(ctx, "prune-log@example.com", "correct horse battery", "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.Authenticate(ctx, pair.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Logout(ctx, p, pair.RefreshToken); err != nil {
		t.Fatal(err)
	}
	now = start.Add(2 * time.Hour)
	svc.Prune(ctx)
	if got := logs.String(); !strings.Contains(got, "pruned expired tokens") || !strings.Contains(got, "revocations=1") {
		t.Fatalf("log after pruning a revocation: %q", got)
	}
	logs.Reset()
	svc.Prune(ctx)
	if logs.Len() != 0 {
		t.Fatalf("nothing left to prune, yet logged %q", logs.String())
	}
}
