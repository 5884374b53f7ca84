package webhook_test

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
	"github.com/parley-dev/parley/internal/webhookhttp"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// clock is a settable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

type env struct {
	svc   *webhook.Service
	store *postgres.WebhookStore
	clock *clock
	users *postgres.AccountStore
}

func newEnv(t *testing.T) *env {
	db := testenv.DB(t)
	c := &clock{t: time.Now().UTC().Truncate(time.Microsecond)}
	store := postgres.NewWebhookStore(db)
	// Strict but for 127.0.0.1 over http, as the tests' receivers are.
	urls := webhookhttp.Policy{AllowHTTP: true, Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	return &env{svc: webhook.NewService(store, urls, webhook.Options{Now: c.now}), store: store, clock: c, users: postgres.NewAccountStore(db)}
}

func (e *env) user(t *testing.T) auth.Principal {
	t.Helper()
	u, err := e.users.CreateUser(t.Context(), account.User{ID: uuid.New(), Email: uuid.NewString() + "@example.com", DisplayName: "u"}, "$argon2id$stub")
	if err != nil {
		t.Fatal(err)
	}
	return auth.Principal{ID: u.ID, Kind: auth.KindUser}
}

// secrets returns the endpoint's signing secrets at the env's clock plus d.
func (e *env) secrets(t *testing.T, id uuid.UUID, d time.Duration) []webhook.Secret {
	t.Helper()
	s, err := e.store.Secrets(t.Context(), id, e.clock.now().Add(d))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sameSecrets(got []webhook.Secret, want ...webhook.Secret) bool {
	return slices.EqualFunc(got, want, webhook.Secret.Equal)
}

func TestRegisterEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	ep, secret, err := e.svc.RegisterEndpoint(t.Context(), alice, "http://127.0.0.1:9/hooks", []string{webhook.CallEnded, webhook.CallStarted, webhook.CallEnded})
	if err != nil {
		t.Fatal(err)
	}
	if ep.UserID != alice.ID || ep.URL != "http://127.0.0.1:9/hooks" || !slices.Equal(ep.EventTypes, []string{webhook.CallEnded, webhook.CallStarted}) || !ep.CreatedAt.Equal(e.clock.now()) {
		t.Fatalf("RegisterEndpoint = %+v", ep)
	}
	if !ep.Subscribes(webhook.CallStarted) || ep.Subscribes(webhook.ItemsAppended) {
		t.Fatalf("Subscribes: %v", ep.EventTypes)
	}
	if got := e.secrets(t, ep.ID, 0); !sameSecrets(got, secret) {
		t.Fatalf("stored secrets = %v, want the one returned", got)
	}
	got, err := e.svc.Endpoint(t.Context(), alice, ep.ID)
	if err != nil || got.ID != ep.ID || !slices.Equal(got.EventTypes, ep.EventTypes) || !got.CreatedAt.Equal(ep.CreatedAt) {
		t.Fatalf("Endpoint = %+v, %v; want %+v", got, err, ep)
	}
}

func TestRegisterEndpointRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	for _, c := range []struct {
		name  string
		url   string
		types []string
	}{
		{"private address", "https://10.0.0.1/hooks", []string{webhook.CallEnded}},
		{"metadata address", "http://169.254.169.254/latest/meta-data/", []string{webhook.CallEnded}},
		{"other loopback", "http://127.0.0.2/", []string{webhook.CallEnded}},
		{"not a URL", "hooks", []string{webhook.CallEnded}},
		{"empty URL", "", []string{webhook.CallEnded}},
		{"no event types", "http://127.0.0.1:9/", nil},
		{"unknown event type", "http://127.0.0.1:9/", []string{"call.exploded"}},
	} {
		if _, _, err := e.svc.RegisterEndpoint(t.Context(), alice, c.url, c.types); !errors.Is(err, webhook.ErrInvalid) {
			t.Errorf("%s: RegisterEndpoint = %v, want ErrInvalid", c.name, err)
		}
	}
	agent := auth.Principal{ID: uuid.New(), Kind: auth.KindAgent}
	if _, _, err := e.svc.RegisterEndpoint(t.Context(), agent, "http://127.0.0.1:9/", []string{webhook.CallEnded}); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("agent: RegisterEndpoint = %v, want ErrPermissionDenied", err)
	}
	if eps, err := e.svc.Endpoints(t.Context(), alice); err != nil || len(eps) != 0 {
		t.Fatalf("after refusals Endpoints = %v, %v; want none", eps, err)
	}
}

func TestEndpointsAreTheOwners(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice, bob := e.user(t), e.user(t)
	first, _, err := e.svc.RegisterEndpoint(t.Context(), alice, "http://127.0.0.1:9/a", []string{webhook.CallEnded})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.add(time.Second)
	second, _, err := e.svc.RegisterEndpoint(t.Context(), alice, "http://127.0.0.1:9/b", []string{webhook.ExportReady})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := e.svc.Endpoints(t.Context(), alice)
	if err != nil || len(eps) != 2 || eps[0].ID != first.ID || eps[1].ID != second.ID {
		t.Fatalf("Endpoints(alice) = %v, %v; want first then second", eps, err)
	}
	if eps, err := e.svc.Endpoints(t.Context(), bob); err != nil || len(eps) != 0 {
		t.Fatalf("Endpoints(bob) = %v, %v; want none", eps, err)
	}
	if _, err := e.svc.Endpoint(t.Context(), bob, first.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("bob's Endpoint(alice's) = %v, want ErrNotFound", err)
	}
	if _, err := e.svc.RotateSecret(t.Context(), bob, first.ID, 0); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("bob's RotateSecret(alice's) = %v, want ErrNotFound", err)
	}
	if err := e.svc.DeleteEndpoint(t.Context(), bob, first.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("bob's DeleteEndpoint(alice's) = %v, want ErrNotFound", err)
	}
	if err := e.svc.DeleteEndpoint(t.Context(), alice, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Endpoint(t.Context(), alice, first.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("Endpoint after delete = %v, want ErrNotFound", err)
	}
	if err := e.svc.DeleteEndpoint(t.Context(), alice, first.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("second DeleteEndpoint = %v, want ErrNotFound", err)
	}
	if got := e.secrets(t, first.ID, 0); len(got) != 0 {
		t.Errorf("a deleted endpoint still has %d secrets", len(got))
	}
}

func TestRotateSecretOverlaps(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	ep, first, err := e.svc.RegisterEndpoint(t.Context(), alice, "http://127.0.0.1:9/", []string{webhook.CallEnded})
	if err != nil {
		t.Fatal(err)
	}
	second, err := e.svc.RotateSecret(t.Context(), alice, ep.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if second.Equal(first) {
		t.Fatal("rotation returned the same secret")
	}
	if got := e.secrets(t, ep.ID, 0); !sameSecrets(got, second, first) {
		t.Fatalf("during the overlap secrets = %v, want new then old", got)
	}
	if got := e.secrets(t, ep.ID, time.Hour+time.Second); !sameSecrets(got, second) {
		t.Fatalf("after the overlap secrets = %v, want only the new", got)
	}

	// A second rotation within the first's overlap (default 24h) retires
	// the second secret then, and leaves the first its earlier end.
	e.clock.add(30 * time.Minute)
	third, err := e.svc.RotateSecret(t.Context(), alice, ep.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.secrets(t, ep.ID, 0); !sameSecrets(got, third, second, first) {
		t.Fatalf("after two rotations secrets = %v, want all three", got)
	}
	if got := e.secrets(t, ep.ID, 31*time.Minute); !sameSecrets(got, third, second) {
		t.Fatalf("once the first overlap ends secrets = %v, want third and second", got)
	}
	if got := e.secrets(t, ep.ID, webhook.DefaultRotationOverlap+time.Second); !sameSecrets(got, third) {
		t.Fatalf("once the second overlap ends secrets = %v, want only the third", got)
	}

	for _, bad := range []time.Duration{-time.Second, webhook.MaxRotationOverlap + time.Second} {
		if _, err := e.svc.RotateSecret(t.Context(), alice, ep.ID, bad); !errors.Is(err, webhook.ErrInvalid) {
			t.Errorf("RotateSecret(overlap %v) = %v, want ErrInvalid", bad, err)
		}
	}
	if got := e.secrets(t, ep.ID, 0); len(got) != 3 {
		t.Fatalf("refused rotations changed the secrets: %d", len(got))
	}
}

// MaxEndpoints holds under concurrent registrations of one user.
func TestEndpointsAreBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	made, refused := 0, 0
	for range webhook.MaxEndpoints + 5 {
		wg.Go(func() {
			_, _, err := e.svc.RegisterEndpoint(t.Context(), alice, "http://127.0.0.1:9/", []string{webhook.CallEnded})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				made++
			case errors.Is(err, webhook.ErrTooManyEndpoints):
				refused++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if made != webhook.MaxEndpoints || refused != 5 {
		t.Fatalf("%d made, %d refused; want %d and 5", made, refused, webhook.MaxEndpoints)
	}
	eps, err := e.svc.Endpoints(t.Context(), alice)
	if err != nil || len(eps) != webhook.MaxEndpoints {
		t.Fatalf("Endpoints = %d, %v", len(eps), err)
	}
	// Another user is not bounded by alice's.
	if _, _, err := e.svc.RegisterEndpoint(t.Context(), e.user(t), "http://127.0.0.1:9/", []string{webhook.CallEnded}); err != nil {
		t.Fatal(err)
	}
	// A user that is gone gets no endpoint.
	if _, _, err := e.svc.RegisterEndpoint(t.Context(), auth.Principal{ID: uuid.New(), Kind: auth.KindUser}, "http://127.0.0.1:9/", []string{webhook.CallEnded}); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("unknown user: %v, want ErrNotFound", err)
	}
}
