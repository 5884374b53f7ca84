package postgres_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func newUser(t *testing.T, s *postgres.AccountStore, email string) account.User {
	t.Helper()
	u, err := s.CreateUser(t.Context(), account.User{ID: uuid.New(), Email: email, DisplayName: "Someone"}, "$argon2id$stub")
	if err != nil {
		t.Fatalf("CreateUser(%q): %v", email, err)
	}
	return u
}

func TestAccountStoreUsers(t *testing.T) {
	t.Parallel()
	s := postgres.NewAccountStore(testenv.DB(t))
	ctx := t.Context()

	u := newUser(t, s, "ada@example.com")
	if u.CreatedAt.IsZero() || u.DisplayName != "Someone" {
		t.Errorf("CreateUser = %+v", u)
	}
	if _, err := s.CreateUser(ctx, account.User{ID: uuid.New(), Email: "ada@example.com", DisplayName: "x"}, "h"); !errors.Is(err, account.ErrEmailTaken) {
		t.Errorf("CreateUser with a taken email: got %v, want ErrEmailTaken", err)
	}

	got, hash, err := s.UserByEmail(ctx, "ada@example.com")
	if err != nil || got.ID != u.ID || hash != "$argon2id$stub" {
		t.Errorf("UserByEmail = %+v, %q, %v", got, hash, err)
	}
	if _, _, err := s.UserByEmail(ctx, "nobody@example.com"); !errors.Is(err, account.ErrUserNotFound) {
		t.Errorf("UserByEmail of an unknown email: got %v", err)
	}
	if _, err := s.User(ctx, uuid.New()); !errors.Is(err, account.ErrUserNotFound) {
		t.Errorf("User of an unknown id: got %v", err)
	}

	updated, err := s.UpdateDisplayName(ctx, u.ID, "Ada", time.Now())
	if err != nil || updated.DisplayName != "Ada" || !updated.CreatedAt.Equal(u.CreatedAt) {
		t.Errorf("UpdateDisplayName = %+v, %v", updated, err)
	}
	if _, err := s.UpdateDisplayName(ctx, uuid.New(), "Ghost", time.Now()); !errors.Is(err, account.ErrUserNotFound) {
		t.Errorf("UpdateDisplayName of an unknown id: got %v", err)
	}
}

func TestAccountStoreRefreshTokens(t *testing.T) {
	t.Parallel()
	s := postgres.NewAccountStore(testenv.DB(t))
	ctx := t.Context()
	now := time.Now()
	u := newUser(t, s, "grace@example.com")
	mallory := newUser(t, s, "mallory@example.com")

	first := account.RefreshToken{ID: uuid.New(), Hash: hashOf("first"), UserID: u.ID, FamilyID: uuid.New(), ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateRefreshToken(ctx, first); err != nil {
		t.Fatal(err)
	}
	orphan := account.RefreshToken{ID: uuid.New(), Hash: hashOf("orphan"), UserID: uuid.New(), FamilyID: uuid.New(), ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateRefreshToken(ctx, orphan); !errors.Is(err, account.ErrUserNotFound) {
		t.Errorf("CreateRefreshToken for an unknown user: got %v", err)
	}

	next := func(name string) account.RefreshToken {
		return account.RefreshToken{ID: uuid.New(), Hash: hashOf(name), ExpiresAt: now.Add(time.Hour)}
	}
	spent, err := s.RotateRefreshToken(ctx, first.Hash, next("second"), now)
	if err != nil {
		t.Fatal(err)
	}
	if spent.ID != first.ID || spent.UserID != u.ID || spent.FamilyID != first.FamilyID {
		t.Errorf("RotateRefreshToken returned %+v, want the first token", spent)
	}
	if _, err := s.RotateRefreshToken(ctx, hashOf("second"), next("third"), now); err != nil {
		t.Fatalf("rotating the child: %v", err)
	}

	if _, err := s.RotateRefreshToken(ctx, hashOf("unknown"), next("x"), now); !errors.Is(err, auth.ErrUnauthenticated) || errors.Is(err, account.ErrRefreshTokenReused) {
		t.Errorf("rotating an unknown token: got %v, want plain ErrUnauthenticated", err)
	}
	if _, err := s.RotateRefreshToken(ctx, hashOf("third"), next("x"), now.Add(2*time.Hour)); !errors.Is(err, auth.ErrUnauthenticated) || errors.Is(err, account.ErrRefreshTokenReused) {
		t.Errorf("rotating an expired token: got %v, want plain ErrUnauthenticated", err)
	}

	// Reuse of the spent first token revokes the family, which takes the
	// unspent third token with it; the failed call still commits that.
	reused, err := s.RotateRefreshToken(ctx, first.Hash, next("y"), now)
	if !errors.Is(err, account.ErrRefreshTokenReused) || !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("rotating a spent token: got %v, want ErrRefreshTokenReused", err)
	}
	if reused.UserID != u.ID || reused.FamilyID != first.FamilyID {
		t.Errorf("reuse reported %+v", reused)
	}
	if _, err := s.RotateRefreshToken(ctx, hashOf("third"), next("z"), now); !errors.Is(err, account.ErrRefreshTokenReused) {
		t.Errorf("rotating an unspent token of a revoked family: got %v, want ErrRefreshTokenReused", err)
	}

	other := account.RefreshToken{ID: uuid.New(), Hash: hashOf("other"), UserID: u.ID, FamilyID: uuid.New(), ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateRefreshToken(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.RevokeRefreshFamily(ctx, other.Hash, mallory.ID, now); err != nil || ok {
		t.Errorf("RevokeRefreshFamily by another user = %v, %v; want false", ok, err)
	}
	if _, ok, err := s.RevokeRefreshFamily(ctx, hashOf("unknown"), u.ID, now); err != nil || ok {
		t.Errorf("RevokeRefreshFamily of an unknown token = %v, %v; want false", ok, err)
	}
	if _, ok, err := s.RevokeRefreshFamily(ctx, other.Hash, u.ID, now); err != nil || !ok {
		t.Errorf("RevokeRefreshFamily by its owner = %v, %v; want true", ok, err)
	}
	if _, err := s.RotateRefreshToken(ctx, other.Hash, next("w"), now); !errors.Is(err, account.ErrRefreshTokenReused) {
		t.Errorf("rotating a token of a family revoked by logout: got %v", err)
	}
}

// TestAccountStoreRevokedFamilies checks that revoking a refresh family,
// by reuse or by Logout, revokes its access tokens until the latest of them
// expires, and no longer.
func TestAccountStoreRevokedFamilies(t *testing.T) {
	t.Parallel()
	s := postgres.NewAccountStore(testenv.DB(t))
	ctx := t.Context()
	now := time.Now().Truncate(time.Microsecond)
	u := newUser(t, s, "family@example.com")
	token := func(name string, family uuid.UUID, accessExp time.Time) account.RefreshToken {
		return account.RefreshToken{ID: uuid.New(), Hash: hashOf(name), UserID: u.ID, FamilyID: family,
			ExpiresAt: now.Add(24 * time.Hour), AccessExpiresAt: accessExp}
	}

	stolen := token("stolen-1", uuid.New(), now.Add(30*time.Minute))
	if err := s.CreateRefreshToken(ctx, stolen); err != nil {
		t.Fatal(err)
	}
	// The rotation issues a later access token: the revocation must outlast it.
	if _, err := s.RotateRefreshToken(ctx, stolen.Hash, token("stolen-2", uuid.Nil, now.Add(50*time.Minute)), now); err != nil {
		t.Fatal(err)
	}
	if revoked, err := s.IsAccessTokenRevoked(ctx, "jti", stolen.FamilyID); err != nil || revoked {
		t.Fatalf("a live family's token: revoked = %v, %v", revoked, err)
	}
	reused, err := s.RotateRefreshToken(ctx, stolen.Hash, token("x", uuid.Nil, now.Add(time.Hour)), now)
	if !errors.Is(err, account.ErrRefreshTokenReused) {
		t.Fatalf("reuse: %v", err)
	}
	if !reused.AccessExpiresAt.Equal(now.Add(50 * time.Minute)) {
		t.Errorf("reuse revoked the family's access tokens until %v, want %v", reused.AccessExpiresAt, now.Add(50*time.Minute))
	}

	logout := token("logout-1", uuid.New(), now.Add(20*time.Minute))
	if err := s.CreateRefreshToken(ctx, logout); err != nil {
		t.Fatal(err)
	}
	rf, ok, err := s.RevokeRefreshFamily(ctx, logout.Hash, u.ID, now)
	if err != nil || !ok || rf != (account.RevokedFamily{ID: logout.FamilyID, ExpiresAt: now.Add(20 * time.Minute)}) {
		t.Errorf("RevokeRefreshFamily = %+v, %v, %v", rf, ok, err)
	}
	// A second revocation does not shorten the first.
	if rf, _, err := s.RevokeRefreshFamily(ctx, logout.Hash, u.ID, now.Add(time.Minute)); err != nil || !rf.ExpiresAt.Equal(now.Add(20*time.Minute)) {
		t.Errorf("revoking again = %+v, %v", rf, err)
	}

	for family, want := range map[uuid.UUID]bool{stolen.FamilyID: true, logout.FamilyID: true, uuid.New(): false, uuid.Nil: false} {
		if got, err := s.IsAccessTokenRevoked(ctx, "some-jti", family); err != nil || got != want {
			t.Errorf("IsAccessTokenRevoked(family %s) = %v, %v; want %v", family, got, err, want)
		}
	}
	if err := s.RevokeAccessToken(ctx, account.RevokedToken{ID: "own", ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.IsAccessTokenRevoked(ctx, "own", uuid.New()); err != nil || !got {
		t.Errorf("a revoked jti in a live family: %v, %v", got, err)
	}

	live, err := s.RevokedFamilies(ctx, now.Add(30*time.Minute))
	if err != nil || len(live) != 1 || live[0] != (account.RevokedFamily{ID: stolen.FamilyID, ExpiresAt: now.Add(50 * time.Minute)}) {
		t.Errorf("RevokedFamilies = %+v, %v; want only the stolen family", live, err)
	}
	if n, err := s.PruneRevokedFamilies(ctx, now.Add(30*time.Minute)); err != nil || n != 1 {
		t.Errorf("PruneRevokedFamilies = %d, %v; want 1", n, err)
	}
	if got, _ := s.IsAccessTokenRevoked(ctx, "some-jti", logout.FamilyID); got {
		t.Error("pruned family revocation still present")
	}
}

func TestAccountStoreAgentKeys(t *testing.T) {
	t.Parallel()
	s := postgres.NewAccountStore(testenv.DB(t))
	ctx := t.Context()
	k, err := s.CreateAgentKey(ctx, account.AgentKey{ID: uuid.New(), Name: "bot"}, hashOf("key"))
	if err != nil || k.CreatedAt.IsZero() || !k.RevokedAt.IsZero() {
		t.Fatalf("CreateAgentKey = %+v, %v", k, err)
	}
	got, err := s.AgentKeyByHash(ctx, hashOf("key"))
	if err != nil || got.ID != k.ID || got.Name != "bot" {
		t.Errorf("AgentKeyByHash = %+v, %v", got, err)
	}
	if _, err := s.AgentKeyByHash(ctx, hashOf("other")); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("AgentKeyByHash of an unknown key: got %v", err)
	}
	for range 2 { // revoking twice is fine
		if err := s.RevokeAgentKey(ctx, k.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.AgentKeyByHash(ctx, hashOf("key")); err != nil || got.RevokedAt.IsZero() {
		t.Errorf("AgentKeyByHash after revocation = %+v, %v", got, err)
	}
	if err := s.RevokeAgentKey(ctx, uuid.New(), time.Now()); !errors.Is(err, account.ErrAgentKeyNotFound) {
		t.Errorf("RevokeAgentKey of an unknown key: got %v", err)
	}
}

func TestAccountStoreRevokedAccessTokens(t *testing.T) {
	t.Parallel()
	s := postgres.NewAccountStore(testenv.DB(t))
	ctx := t.Context()
	now := time.Now()
	for _, r := range []account.RevokedToken{
		{ID: "live", ExpiresAt: now.Add(time.Hour)},
		{ID: "live", ExpiresAt: now.Add(time.Hour)}, // revoked twice
		{ID: "recent", ExpiresAt: now.Add(-time.Minute)},
		{ID: "old", ExpiresAt: now.Add(-2 * time.Hour)},
	} {
		if err := s.RevokeAccessToken(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for jti, want := range map[string]bool{"live": true, "recent": true, "never": false} {
		if got, err := s.IsAccessTokenRevoked(ctx, jti, uuid.Nil); err != nil || got != want {
			t.Errorf("IsAccessTokenRevoked(%q) = %v, %v; want %v", jti, got, err, want)
		}
	}
	live, err := s.RevokedAccessTokens(ctx, now)
	if err != nil || len(live) != 1 || live[0].ID != "live" || !live[0].ExpiresAt.Equal(now.Add(time.Hour).Truncate(time.Microsecond)) {
		t.Errorf("RevokedAccessTokens = %+v, %v; want only the live one", live, err)
	}
	if n, err := s.PruneRevokedAccessTokens(ctx, now.Add(-time.Hour)); err != nil || n != 1 {
		t.Errorf("PruneRevokedAccessTokens = %d, %v; want 1", n, err)
	}
	if got, _ := s.IsAccessTokenRevoked(ctx, "old", uuid.Nil); got {
		t.Error("pruned revocation still present")
	}
}

// seed calls add(0) to add(n-1), a few at a time.
func seed(t *testing.T, n int, add func(i int) error) {
	t.Helper()
	next := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				if err := add(i); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// count runs a SELECT count(*) query, to look at what pruning left.
func count(t *testing.T, db *bun.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestAccountStorePruneRefreshTokens(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewAccountStore(db)
	ctx := t.Context()
	now := time.Now()
	u := newUser(t, s, "prune@example.com")
	token := func(name string, exp time.Time) account.RefreshToken {
		return account.RefreshToken{ID: uuid.New(), Hash: hashOf(name), UserID: u.ID, FamilyID: uuid.New(), ExpiresAt: exp}
	}

	// A live family: its first token, spent, expires before the cutoff;
	// its child, the one the client holds, after it.
	live := token("live-1", now.Add(time.Hour))
	if err := s.CreateRefreshToken(ctx, live); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateRefreshToken(ctx, live.Hash, token("live-2", now.Add(3*time.Hour)), now); err != nil {
		t.Fatal(err)
	}
	// A dead family: every token expired before the cutoff.
	dead := token("dead-1", now.Add(time.Hour))
	if err := s.CreateRefreshToken(ctx, dead); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateRefreshToken(ctx, dead.Hash, token("dead-2", now.Add(90*time.Minute)), now); err != nil {
		t.Fatal(err)
	}
	// A backlog of more than a batch of lone expired tokens.
	backlog := postgres.PruneBatch + 7
	seed(t, backlog, func(i int) error {
		return s.CreateRefreshToken(ctx, token(fmt.Sprintf("old-%d", i), now.Add(-time.Hour)))
	})

	cutoff := now.Add(2 * time.Hour)
	n, err := s.PruneRefreshTokens(ctx, cutoff)
	if want := int64(backlog + 3); err != nil || n != want {
		t.Fatalf("PruneRefreshTokens = %d, %v; want %d (the backlog, live-1, dead-1 and dead-2)", n, err, want)
	}
	if got := count(t, db, "SELECT count(*) FROM refresh_tokens WHERE expires_at < ?", cutoff); got != 0 {
		t.Errorf("%d tokens expired before the cutoff are left", got)
	}
	if got := count(t, db, "SELECT count(*) FROM refresh_tokens"); got != 1 {
		t.Errorf("%d tokens left, want only live-2", got)
	}
	if got := count(t, db, "SELECT count(*) FROM refresh_families"); got != 1 {
		t.Errorf("%d families left, want only the live one", got)
	}
	if got := count(t, db, "SELECT count(*) FROM refresh_families WHERE id = ?", live.FamilyID); got != 1 {
		t.Error("the live family was deleted")
	}

	// The token the client holds still rotates, in its family, and its
	// spent, pruned parent is simply unknown.
	spent, err := s.RotateRefreshToken(ctx, hashOf("live-2"), token("live-3", now.Add(3*time.Hour)), now)
	if err != nil || spent.FamilyID != live.FamilyID {
		t.Fatalf("rotating the surviving token = %+v, %v", spent, err)
	}
	if _, err := s.RotateRefreshToken(ctx, live.Hash, token("x", now.Add(time.Hour)), now); !errors.Is(err, auth.ErrUnauthenticated) || errors.Is(err, account.ErrRefreshTokenReused) {
		t.Errorf("rotating the pruned token: got %v, want plain ErrUnauthenticated", err)
	}
	if n, err := s.PruneRefreshTokens(ctx, now); err != nil || n != 0 {
		t.Errorf("PruneRefreshTokens with nothing expired = %d, %v", n, err)
	}
}

func TestAccountStorePruneRevokedAccessTokensInBatches(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewAccountStore(db)
	ctx := t.Context()
	now := time.Now()
	backlog := 2*postgres.PruneBatch + 3
	seed(t, backlog, func(i int) error {
		return s.RevokeAccessToken(ctx, account.RevokedToken{ID: fmt.Sprintf("old-%d", i), ExpiresAt: now.Add(-2 * time.Hour)})
	})
	if err := s.RevokeAccessToken(ctx, account.RevokedToken{ID: "live", ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneRevokedAccessTokens(ctx, now.Add(-time.Hour)); err != nil || n != int64(backlog) {
		t.Fatalf("PruneRevokedAccessTokens = %d, %v; want %d", n, err, backlog)
	}
	if got := count(t, db, "SELECT count(*) FROM revoked_tokens"); got != 1 {
		t.Errorf("%d revocations left, want only the live one", got)
	}
	if ok, err := s.IsAccessTokenRevoked(ctx, "live", uuid.Nil); err != nil || !ok {
		t.Errorf("the live revocation: %v, %v", ok, err)
	}
}
