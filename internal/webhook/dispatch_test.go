package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
	"github.com/parley-dev/parley/internal/webhookhttp"
)

// receiver is a customer's endpoint: while fail says so it answers 500;
// otherwise, when verifier is set, it hands each delivery to the pinned
// Standard Webhooks reference library (testenv.WebhookReceiver) with
// secret and takes only what that verifies.
type receiver struct {
	t        *testing.T
	srv      *httptest.Server
	verifier string
	fail     func() bool

	mu       sync.Mutex
	secret   webhook.Secret
	got      []string // webhook-ids taken, in order
	bodies   map[string][]byte
	attempts int
}

func newReceiver(t *testing.T, verifier string, fail func() bool) *receiver {
	r := &receiver{t: t, verifier: verifier, fail: fail, bodies: map[string][]byte{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.attempts++
	secret := r.secret
	r.mu.Unlock()
	if r.fail != nil && r.fail() {
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	if r.verifier != "" {
		if err := testenv.VerifyWebhook(req.Context(), r.verifier, secret.Text(), req.Header, body); err != nil {
			r.t.Error(err)
			http.Error(w, "unverified", http.StatusUnauthorized)
			return
		}
	}
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	r.got = append(r.got, id)
	r.bodies[id] = body
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) taken() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *receiver) tries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts
}

// register makes r an endpoint of p for types.
func (e *env) register(t *testing.T, p auth.Principal, r *receiver, types ...string) webhook.Endpoint {
	t.Helper()
	ep, secret, err := e.svc.RegisterEndpoint(t.Context(), p, r.srv.URL+"/hooks", types)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.secret = secret
	r.mu.Unlock()
	return ep
}

// publish writes an event of p's, returning its webhook-id.
func (e *env) publish(t *testing.T, p auth.Principal, typ string, n int) string {
	t.Helper()
	ev, err := webhook.NewEvent(p.ID, typ, json.RawMessage(fmt.Sprintf(`{"n":%d,"text":"Grüße 🎙"}`, n)), e.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID.String()
}

func (e *env) dispatcher(opts webhook.DispatcherOptions) *webhook.Dispatcher {
	client := webhookhttp.NewClient(webhookhttp.Policy{AllowHTTP: true, Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, 5*time.Second)
	opts.Now = e.clock.now
	return webhook.NewDispatcher(e.store, webhookhttp.NewSender(client), opts)
}

// drain runs d until a pass claims nothing, stepping the clock by step
// after each pass, at most passes times.
func drain(t *testing.T, e *env, d *webhook.Dispatcher, step time.Duration, passes int, done func() bool) {
	t.Helper()
	for range passes {
		if _, err := d.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		if done() {
			return
		}
		e.clock.add(step)
	}
	t.Fatalf("not done after %d passes", passes)
}

func TestDeliveriesAreVerifiedAndInOrderPerEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	verifier := testenv.WebhookReceiver(t)
	alice, bob := e.user(t), e.user(t)
	ended, both, bobs := newReceiver(t, verifier, nil), newReceiver(t, verifier, nil), newReceiver(t, verifier, nil)
	e.register(t, alice, ended, webhook.CallEnded)
	e.register(t, alice, both, webhook.CallStarted, webhook.CallEnded)
	e.register(t, bob, bobs, webhook.CallEnded)

	var wantEnded, wantBoth []string
	for i := range 6 {
		typ := webhook.CallStarted
		if i%2 == 1 {
			typ = webhook.CallEnded
		}
		id := e.publish(t, alice, typ, i)
		wantBoth = append(wantBoth, id)
		if typ == webhook.CallEnded {
			wantEnded = append(wantEnded, id)
		}
	}
	wantBob := []string{e.publish(t, bob, webhook.CallEnded, 99)}
	// Nobody takes recordings: no delivery at all.
	e.publish(t, alice, webhook.RecordingReady, 100)

	d := e.dispatcher(webhook.DispatcherOptions{})
	drain(t, e, d, 0, 20, func() bool {
		return len(ended.taken()) == len(wantEnded) && len(both.taken()) == len(wantBoth) && len(bobs.taken()) == 1
	})
	if n, err := d.RunOnce(t.Context()); err != nil || n != 0 {
		t.Fatalf("a pass after all were delivered claimed %d, %v", n, err)
	}
	for name, c := range map[string]struct {
		r    *receiver
		want []string
	}{"call.ended": {ended, wantEnded}, "both": {both, wantBoth}, "bob": {bobs, wantBob}} {
		if got := c.r.taken(); !slices.Equal(got, c.want) {
			t.Errorf("%s endpoint took %v, want %v", name, got, c.want)
		}
	}
	var payload struct {
		Type string `json:"type"`
		Data struct {
			N    int    `json:"n"`
			Text string `json:"text"`
		} `json:"data"`
	}
	if err := json.Unmarshal(both.bodies[wantBoth[1]], &payload); err != nil || payload.Type != webhook.CallEnded || payload.Data.N != 1 || payload.Data.Text != "Grüße 🎙" {
		t.Fatalf("payload %s: %+v, %v", both.bodies[wantBoth[1]], payload, err)
	}
}

// The receiver answers 500 for 10 minutes of the dispatcher's clock, then
// recovers and gets every event once, in order. The clock starts 13
// minutes behind the real one, so that the attempts after the recovery
// carry timestamps the reference library accepts (within 5 minutes). The
// jitter is fixed at its low end: retries then fail at 0, 15 s, … 7.8 min
// and succeed at 15.8 min, about 3 minutes ahead of the real clock; a
// random jitter could put the first attempt after the recovery at 23 min,
// which the library refuses as too new (seen in CI).
func TestReceiverDownForTenMinutesGetsEveryEventInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	start := time.Now().Add(-13 * time.Minute)
	e.clock.add(start.Sub(e.clock.now()))
	verifier := testenv.WebhookReceiver(t)
	alice := e.user(t)
	r := newReceiver(t, verifier, func() bool { return e.clock.now().Before(start.Add(10 * time.Minute)) })
	e.register(t, alice, r, webhook.CallEnded)
	var want []string
	for i := range 5 {
		want = append(want, e.publish(t, alice, webhook.CallEnded, i))
	}
	d := e.dispatcher(webhook.DispatcherOptions{Jitter: func() float64 { return 0 }})
	drain(t, e, d, 10*time.Second, 400, func() bool { return len(r.taken()) == len(want) })
	if got := r.taken(); !slices.Equal(got, want) {
		t.Fatalf("took %v, want %v", got, want)
	}
	// While it was down only the first event was tried: the line waits.
	if failed := r.tries() - len(want); failed < 4 {
		t.Fatalf("%d failed attempts in 10 minutes, want the retries to have gone on", failed)
	}
	if now := e.clock.now(); now.Before(start.Add(10 * time.Minute)) {
		t.Fatalf("delivered at %v, before the receiver recovered", now.Sub(start))
	}
}

// A dispatcher that dies mid-delivery (SIGKILL: it claimed and never
// finished) holds the delivery only until its lease runs out; another
// then delivers it, and the dead one's late outcome changes nothing.
func TestLeaseOfADeadDispatcherRunsOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	r := newReceiver(t, testenv.WebhookReceiver(t), nil)
	e.register(t, alice, r, webhook.CallEnded)
	first := e.publish(t, alice, webhook.CallEnded, 1)
	second := e.publish(t, alice, webhook.CallEnded, 2)

	dead, err := e.store.ClaimDeliveries(t.Context(), e.clock.now(), 10, time.Minute)
	if err != nil || len(dead) != 1 || dead[0].Event.ID.String() != first {
		t.Fatalf("claim = %v, %v; want only the endpoint's first event", dead, err)
	}
	d := e.dispatcher(webhook.DispatcherOptions{Lease: time.Minute})
	if n, err := d.RunOnce(t.Context()); err != nil || n != 0 {
		t.Fatalf("while the lease holds a pass claimed %d, %v; want 0 (the second waits behind the first)", n, err)
	}
	e.clock.add(time.Minute)
	drain(t, e, d, time.Second, 10, func() bool { return len(r.taken()) == 2 })
	if got := r.taken(); !slices.Equal(got, []string{first, second}) {
		t.Fatalf("took %v, want %v", got, []string{first, second})
	}
	// The dead dispatcher's outcome arrives late: dropped.
	if err := e.store.FinishDelivery(t.Context(), dead[0], webhook.Outcome{NextAttemptAt: e.clock.now(), Status: 500, At: e.clock.now()}); err != nil {
		t.Fatal(err)
	}
	if n, err := d.RunOnce(t.Context()); err != nil || n != 0 || len(r.taken()) != 2 {
		t.Fatalf("after the stale outcome a pass claimed %d (%v), receiver took %d; want nothing again", n, err, len(r.taken()))
	}
}

// Two dispatchers (two replicas) drain the same outbox: every event
// arrives, once, in order per endpoint.
func TestConcurrentDispatchers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	verifier := testenv.WebhookReceiver(t)
	alice := e.user(t)
	rs := []*receiver{newReceiver(t, verifier, nil), newReceiver(t, verifier, nil), newReceiver(t, verifier, nil)}
	for _, r := range rs {
		e.register(t, alice, r, webhook.CallEnded)
	}
	var want []string
	for i := range 12 {
		want = append(want, e.publish(t, alice, webhook.CallEnded, i))
	}
	done := func() bool {
		for _, r := range rs {
			if len(r.taken()) < len(want) {
				return false
			}
		}
		return true
	}
	var wg sync.WaitGroup
	for range 2 {
		d := e.dispatcher(webhook.DispatcherOptions{Batch: 2})
		wg.Go(func() {
			for i := 0; i < 200 && !done(); i++ {
				if _, err := d.RunOnce(t.Context()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for i, r := range rs {
		if got := r.taken(); !slices.Equal(got, want) {
			t.Errorf("endpoint %d took %v, want %v", i, got, want)
		}
	}
}

// A receiver that never recovers is retried for at least 24 hours; then
// the delivery is parked and the endpoint's next event goes through.
func TestDeliveryIsParkedAfterTheRetryWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	var mu sync.Mutex
	down := true
	r := newReceiver(t, "", func() bool { mu.Lock(); defer mu.Unlock(); return down })
	e.register(t, alice, r, webhook.CallEnded)
	created := e.clock.now()
	stuck := e.publish(t, alice, webhook.CallEnded, 1)
	d := e.dispatcher(webhook.DispatcherOptions{})
	for i := 0; ; i++ {
		if i > 200 {
			t.Fatal("not parked after 200 passes")
		}
		if _, err := d.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		e.clock.add(10 * time.Minute)
		// Parked once a pass well past the window claims nothing.
		if e.clock.now().Sub(created) > webhook.RetryWindow+2*webhook.MaxRetryDelay {
			break
		}
	}
	tries := r.tries()
	if tries < 24 {
		t.Fatalf("%d attempts in the retry window, want retries all along", tries)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	next := e.publish(t, alice, webhook.CallEnded, 2)
	drain(t, e, d, time.Second, 5, func() bool { return len(r.taken()) == 1 })
	if got := r.taken(); !slices.Equal(got, []string{next}) || slices.Contains(got, stuck) {
		t.Fatalf("after parking took %v, want only %s", got, next)
	}
	if r.tries() != tries+1 {
		t.Fatalf("the parked delivery was tried again: %d attempts after parking", r.tries()-tries-1)
	}
}

// Run delivers what is published while it runs, and returns when its
// context ends.
func TestRunDeliversUntilCancelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.user(t)
	r := newReceiver(t, testenv.WebhookReceiver(t), nil)
	e.register(t, alice, r, webhook.CallEnded)
	ctx, cancel := context.WithCancel(t.Context())
	returned := make(chan error, 1)
	go func() { returned <- e.dispatcher(webhook.DispatcherOptions{Poll: 50 * time.Millisecond}).Run(ctx) }()
	id := e.publish(t, alice, webhook.CallEnded, 1)
	deadline := time.Now().Add(10 * time.Second)
	for len(r.taken()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-returned; err != nil {
		t.Fatalf("Run = %v, want nil once cancelled", err)
	}
	if got := r.taken(); !slices.Equal(got, []string{id}) {
		t.Fatalf("took %v, want %s", got, id)
	}
}
