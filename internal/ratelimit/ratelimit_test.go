package ratelimit_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-dev/parley/internal/limit"
	"github.com/parley-dev/parley/internal/ratelimit"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// newLimiter returns a Limiter on the shared Valkey with its own registry.
func newLimiter(t *testing.T) (*ratelimit.Limiter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	return ratelimit.New(c, ratelimit.Options{Registerer: reg}), reg
}

func allow(t *testing.T, l *ratelimit.Limiter, key string, lim limit.Limit) limit.Decision {
	t.Helper()
	d, err := l.Allow(t.Context(), key, lim)
	if err != nil {
		t.Fatalf("Allow(%q): %v", key, err)
	}
	return d
}

// counter reads a counter from reg; labels are name/value pairs.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestAllowBurstThenRefuse(t *testing.T) {
	t.Parallel()
	l, reg := newLimiter(t)
	key := "user:" + uuid.NewString()
	lim := limit.PerMinute(60)

	for i := range 60 {
		d := allow(t, l, key, lim)
		if !d.Allowed || d.Limit != 60 || d.Remaining != 59-i || d.RetryAfter != 0 {
			t.Fatalf("request %d: got %+v, want allowed, Limit 60, Remaining %d", i+1, d, 59-i)
		}
	}
	d := allow(t, l, key, lim)
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("request 61: got %+v, want refused", d)
	}
	// The 61st request is one emission interval (1 s) early, minus the time
	// the burst took.
	if d.RetryAfter <= 500*time.Millisecond || d.RetryAfter > time.Second {
		t.Errorf("RetryAfter %v, want within (0.5s, 1s]", d.RetryAfter)
	}
	if d.ResetAfter <= 59*time.Second || d.ResetAfter > time.Minute {
		t.Errorf("ResetAfter %v, want within (59s, 60s]", d.ResetAfter)
	}
	if got := counter(t, reg, "parley_ratelimit_decisions_total", "result", "allowed"); got != 60 {
		t.Errorf("allowed decisions %v, want 60", got)
	}
	if got := counter(t, reg, "parley_ratelimit_decisions_total", "result", "refused"); got != 1 {
		t.Errorf("refused decisions %v, want 1", got)
	}
	if got := counter(t, reg, "parley_ratelimit_fallback_total"); got != 0 {
		t.Errorf("fallback decisions %v, want 0", got)
	}
}

func TestAllowRefills(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	key := "user:" + uuid.NewString()
	lim := limit.Limit{Rate: 10, Period: time.Second}

	for range 10 {
		allow(t, l, key, lim)
	}
	d := allow(t, l, key, lim)
	if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 100*time.Millisecond {
		t.Fatalf("after burst: got %+v, want refused with RetryAfter in (0, 100ms]", d)
	}
	time.Sleep(d.RetryAfter + 5*time.Millisecond)
	if d := allow(t, l, key, lim); !d.Allowed {
		t.Fatalf("after RetryAfter: got %+v, want allowed", d)
	}
	if d := allow(t, l, key, lim); d.Allowed {
		t.Fatalf("right after the refilled request: got %+v, want refused", d)
	}

	// After ResetAfter the bucket is full again, and the key has expired.
	d = allow(t, l, key, lim)
	time.Sleep(d.ResetAfter + 20*time.Millisecond)
	if d := allow(t, l, key, lim); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("after ResetAfter: got %+v, want allowed with Remaining 9", d)
	}
}

func TestAllowExpiresIdleKeys(t *testing.T) {
	t.Parallel()
	c := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	l := ratelimit.New(c, ratelimit.Options{KeyPrefix: "test:rl:"})
	key := uuid.NewString()

	d, err := l.Allow(t.Context(), key, limit.Limit{Rate: 10, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := c.Do(t.Context(), c.B().Pttl().Key("test:rl:"+key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	// The key lives exactly until the bucket is full again.
	if ttl <= 0 || time.Duration(ttl)*time.Millisecond > d.ResetAfter+time.Millisecond {
		t.Errorf("PTTL %dms, want within (0, %v]", ttl, d.ResetAfter)
	}
}

func TestAllowSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testenv.ValkeyURL(t)
	// Two limiters on two clients stand for two replicas.
	a := ratelimit.New(testenv.ValkeyClient(t, url), ratelimit.Options{})
	b := ratelimit.New(testenv.ValkeyClient(t, url), ratelimit.Options{})
	key := "ip:" + uuid.NewString()
	lim := limit.PerMinute(10)

	var allowedA, allowedB int
	for range 15 {
		if allow(t, a, key, lim).Allowed {
			allowedA++
		}
		if allow(t, b, key, lim).Allowed {
			allowedB++
		}
	}
	if allowedA+allowedB != 10 || allowedA != 5 || allowedB != 5 {
		t.Fatalf("allowed %d on a and %d on b, want 5 and 5 out of one budget of 10", allowedA, allowedB)
	}
}

func TestAllowConcurrentHonoursBudget(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	key := "agent:" + uuid.NewString()
	lim := limit.PerMinute(50)

	var (
		mu      sync.Mutex
		allowed int
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for range 25 {
				d, err := l.Allow(t.Context(), key, lim)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	// The burst of 50, plus one refilled request per 1.2 s elapsed.
	if max := 50 + int(time.Since(start)/(1200*time.Millisecond)); allowed < 50 || allowed > max {
		t.Fatalf("allowed %d of 200 concurrent requests, want 50 to %d", allowed, max)
	}
}

// A fixed-window counter resets at the boundary, so a full budget spent just
// before it and another just after it pass. GCRA has no boundary: right after
// a burst only what has refilled since passes.
func TestAllowNoDoubleBurstAtBoundary(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	key := "user:" + uuid.NewString()
	lim := limit.Limit{Rate: 20, Period: time.Second} // one request per 50 ms

	// Spend the budget just before a whole second, when a fixed one-second
	// window would reset (Valkey runs on this machine's clock).
	now := time.Now()
	next := now.Truncate(time.Second).Add(time.Second)
	if next.Sub(now) < 100*time.Millisecond {
		next = next.Add(time.Second)
	}
	time.Sleep(time.Until(next.Add(-60 * time.Millisecond)))

	start := time.Now()
	burst := 0
	for range 20 {
		if allow(t, l, key, lim).Allowed {
			burst++
		}
	}
	time.Sleep(time.Until(next.Add(10 * time.Millisecond)))
	second := 0
	for range 20 {
		if allow(t, l, key, lim).Allowed {
			second++
		}
	}
	elapsed := time.Since(start)
	if burst != 20 {
		t.Fatalf("first burst allowed %d, want 20", burst)
	}
	// Only what refilled during the elapsed time (≈70 ms, one request per
	// 50 ms) may pass, not another 20.
	if max := int(elapsed/(50*time.Millisecond)) + 1; second > max {
		t.Fatalf("across the boundary %d passed after %v, want at most %d", second, elapsed, max)
	}
}

func TestAllowKeysIndependent(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	a, b := "user:"+uuid.NewString(), "user:"+uuid.NewString()
	lim := limit.PerMinute(2)

	allow(t, l, a, lim)
	allow(t, l, a, lim)
	if d := allow(t, l, a, lim); d.Allowed {
		t.Fatalf("a: got %+v, want refused", d)
	}
	if d := allow(t, l, b, lim); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("b: got %+v, want allowed with Remaining 1", d)
	}
}

func TestAllowInvalidLimit(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	_, err := l.Allow(t.Context(), "k", limit.Limit{Rate: 0, Period: time.Minute})
	if !errors.Is(err, ratelimit.ErrInvalidLimit) {
		t.Fatalf("err %v, want ErrInvalidLimit", err)
	}
}

// TestCanceledContextCountsLocally checks that a request that gave up (an
// HTTP/2 stream reset at once, a deadline shorter than the timeout) is still
// counted, by the local limiter, and that this is no Valkey outage.
func TestCanceledContextCountsLocally(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	var logs logBuffer
	l := ratelimit.New(testenv.ValkeyClient(t, testenv.ValkeyURL(t)), ratelimit.Options{
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
		Registerer: reg,
	})
	key := "user:" + uuid.NewString()
	lim := limit.PerMinute(2)
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	var got []bool
	for _, ctx := range []context.Context{canceled, expired, canceled} {
		d, err := l.Allow(ctx, key, lim)
		if err != nil {
			t.Fatalf("Allow with a done context: %v", err)
		}
		got = append(got, d.Allowed)
	}
	if want := []bool{true, true, false}; !slices.Equal(got, want) {
		t.Errorf("done contexts allowed %v, want %v: the local budget of 2", got, want)
	}
	if n := counter(t, reg, "parley_ratelimit_fallback_total"); n != 3 {
		t.Errorf("fallback decisions %v, want 3", n)
	}
	// A caller giving up is not a Valkey outage: the next request asks
	// Valkey, whose budget is untouched.
	if d := allow(t, l, key, lim); !d.Allowed || d.Remaining != 1 {
		t.Errorf("a live request after the done ones: %+v, want Valkey's first", d)
	}
	if n := counter(t, reg, "parley_ratelimit_fallback_total"); n != 3 {
		t.Errorf("fallback decisions %v after a live request, want 3", n)
	}
	if n := logs.count("level="); n != 0 {
		t.Errorf("done contexts were logged:\n%s", logs.buf.String())
	}
}

// logBuffer collects log records; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func TestFallbackWhenValkeyDown(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	reg := prometheus.NewRegistry()
	var logs logBuffer
	l := ratelimit.New(testenv.ValkeyClient(t, v.URL()), ratelimit.Options{
		Logger:        slog.New(slog.NewTextHandler(&logs, nil)),
		Registerer:    reg,
		RetryInterval: 20 * time.Millisecond,
	})
	key := "user:" + uuid.NewString()
	lim := limit.PerMinute(5)

	if d := allow(t, l, key, lim); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("before the outage: got %+v", d)
	}

	v.Stop()
	allowed := 0
	for range 12 {
		start := time.Now()
		d := allow(t, l, key, lim)
		if d.Allowed {
			allowed++
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("a fallback decision took %v", took)
		}
		time.Sleep(5 * time.Millisecond) // let some calls probe Valkey
	}
	// The local limiter starts afresh but still limits.
	if allowed != 5 {
		t.Errorf("during the outage allowed %d of 12, want 5", allowed)
	}
	if got := counter(t, reg, "parley_ratelimit_fallback_total"); got != 12 {
		t.Errorf("fallback decisions %v, want 12", got)
	}
	if got := counter(t, reg, "parley_ratelimit_decisions_total", "result", "refused"); got != 7 {
		t.Errorf("refused decisions %v, want 7", got)
	}
	if n := logs.count("rate limiter falling back to local limits"); n != 1 {
		t.Errorf("logged the outage %d times, want once:\n%s", n, logs.buf.String())
	}
	if n := logs.count("level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, logs.buf.String())
	}

	v.Start()
	other := "user:" + uuid.NewString()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := counter(t, reg, "parley_ratelimit_fallback_total")
		d := allow(t, l, other, lim)
		if counter(t, reg, "parley_ratelimit_fallback_total") == before {
			// Valkey answered; the fresh server holds just this request.
			if !d.Allowed || d.Remaining != 4 {
				t.Fatalf("after recovery: got %+v", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still falling back 10s after Valkey restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := logs.count("rate limiter using Valkey again"); n != 1 {
		t.Errorf("logged the recovery %d times, want once:\n%s", n, logs.buf.String())
	}
	if n := logs.count("level=INFO"); n != 1 {
		t.Errorf("%d info lines, want 1:\n%s", n, logs.buf.String())
	}
	for range 3 {
		allow(t, l, other, lim)
	}
	if n := logs.count("level="); n != 2 {
		t.Errorf("%d log lines, want 2 (outage, recovery):\n%s", n, logs.buf.String())
	}
}

// A stalled server (here, busy with a long script) must cost a request no
// more than the timeout, and later requests nothing until the next probe.
func TestFallbackWhenValkeyStalls(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	reg := prometheus.NewRegistry()
	l := ratelimit.New(testenv.ValkeyClient(t, v.URL()), ratelimit.Options{
		Registerer: reg,
		Timeout:    50 * time.Millisecond,
	})
	key := "user:" + uuid.NewString()
	lim := limit.PerMinute(5)
	allow(t, l, key, lim) // connect and load the script first

	busy := testenv.ValkeyClient(t, v.URL())
	done := make(chan error, 1)
	go func() {
		done <- busy.Do(t.Context(), busy.B().Eval().Script(`
local s = redis.call('TIME')
local start = s[1] * 1000000 + s[2]
while true do
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) then return 1 end
end`).Numkeys(0).Arg("600000").Build()).Error()
	}()
	time.Sleep(100 * time.Millisecond) // let the script start

	start := time.Now()
	d := allow(t, l, key, lim)
	first := time.Since(start)
	start = time.Now()
	allow(t, l, key, lim)
	second := time.Since(start)
	t.Logf("call meeting the stall took %v, the next %v", first, second)

	if !d.Allowed {
		t.Errorf("got %+v, want allowed by the local limiter", d)
	}
	if first > 300*time.Millisecond {
		t.Errorf("the call that met the stall took %v, want about the 50ms timeout", first)
	}
	if second > 10*time.Millisecond {
		t.Errorf("the next call took %v, want no wait for Valkey until the next probe", second)
	}
	if got := counter(t, reg, "parley_ratelimit_fallback_total"); got != 2 {
		t.Errorf("fallback decisions %v, want 2", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("busy script: %v", err)
	}
}

func TestMetricsSharedByLimiters(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	a := ratelimit.New(c, ratelimit.Options{Registerer: reg})
	b := ratelimit.New(c, ratelimit.Options{Registerer: reg})
	allow(t, a, uuid.NewString(), limit.PerMinute(1))
	allow(t, b, uuid.NewString(), limit.PerMinute(1))
	if got := counter(t, reg, "parley_ratelimit_decisions_total", "result", "allowed"); got != 2 {
		t.Fatalf("allowed decisions %v, want 2", got)
	}
}

func BenchmarkAllowValkey(b *testing.B) {
	c := testenv.ValkeyClient(b, testenv.ValkeyURL(b))
	l := ratelimit.New(c, ratelimit.Options{Registerer: prometheus.NewRegistry()})
	lim := limit.PerMinute(1_000_000)
	keys := make([]string, 256)
	for i := range keys {
		keys[i] = "bench:" + uuid.NewString()
	}
	ctx := b.Context()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := l.Allow(ctx, keys[i%len(keys)], lim); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// TestAllowAll checks several budgets in one call, in Valkey and in the local
// fallback alike: each allowed check is charged, and the first refusal ends
// the call with the later budgets untouched.
func TestAllowAll(t *testing.T) {
	t.Parallel()
	inBothModes(t, func(t *testing.T, l *ratelimit.Limiter) {
		ip, user := "ip:"+uuid.NewString(), "user:"+uuid.NewString()
		checks := []limit.Check{{Key: ip, Limit: limit.PerMinute(3)}, {Key: user, Limit: limit.PerMinute(2)}}
		all := func() []limit.Decision {
			t.Helper()
			ds, err := l.AllowAll(t.Context(), checks...)
			if err != nil {
				t.Fatalf("AllowAll: %v", err)
			}
			return ds
		}

		ds := all()
		if len(ds) != 2 || !ds[0].Allowed || !ds[1].Allowed || ds[0].Remaining != 2 || ds[1].Remaining != 1 || ds[0].Limit != 3 || ds[1].Limit != 2 {
			t.Fatalf("first call: %+v", ds)
		}
		all()
		// The user budget (2) is spent: the IP is charged, the user refuses.
		ds = all()
		if len(ds) != 2 || !ds[0].Allowed || ds[0].Remaining != 0 || ds[1].Allowed || ds[1].RetryAfter <= 0 {
			t.Fatalf("third call: %+v", ds)
		}
		// The IP budget (3) is spent: it refuses first, and the user's
		// budget is not looked at.
		other := "user:" + uuid.NewString()
		ds, err := l.AllowAll(t.Context(), limit.Check{Key: ip, Limit: limit.PerMinute(3)}, limit.Check{Key: other, Limit: limit.PerMinute(2)})
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != 1 || ds[0].Allowed {
			t.Fatalf("fourth call: %+v", ds)
		}
		if d := allow(t, l, other, limit.PerMinute(2)); !d.Allowed || d.Remaining != 1 {
			t.Fatalf("the budget after a refusal was charged: %+v", d)
		}
	})
}

func TestAllowAllInvalidLimit(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t)
	_, err := l.AllowAll(t.Context(), limit.Check{Key: "a", Limit: limit.PerMinute(1)}, limit.Check{Key: "b"})
	if !errors.Is(err, ratelimit.ErrInvalidLimit) {
		t.Fatalf("got %v, want ErrInvalidLimit", err)
	}
}

// TestRefund checks that a refund gives back exactly one request, in Valkey
// and in the local fallback, and never more than a full budget.
func TestRefund(t *testing.T) {
	t.Parallel()
	inBothModes(t, func(t *testing.T, l *ratelimit.Limiter) {
		c := limit.Check{Key: "user:" + uuid.NewString(), Limit: limit.PerMinute(3)}
		for range 3 {
			allow(t, l, c.Key, c.Limit)
		}
		if d := allow(t, l, c.Key, c.Limit); d.Allowed {
			t.Fatalf("fourth request allowed: %+v", d)
		}
		if err := l.Refund(t.Context(), c); err != nil {
			t.Fatal(err)
		}
		if d := allow(t, l, c.Key, c.Limit); !d.Allowed || d.Remaining != 0 {
			t.Fatalf("after a refund: %+v, want one request allowed", d)
		}
		for range 5 {
			if err := l.Refund(t.Context(), c); err != nil {
				t.Fatal(err)
			}
		}
		if d := allow(t, l, c.Key, c.Limit); !d.Allowed || d.Remaining != 2 {
			t.Fatalf("after refunds past full: %+v, want a full budget", d)
		}
	})
}

// inBothModes runs test against a Limiter on a Valkey of its own, and again
// against one whose Valkey has stopped, so that it decides locally.
func inBothModes(t *testing.T, test func(t *testing.T, l *ratelimit.Limiter)) {
	for _, mode := range []string{"valkey", "local"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			v := testenv.NewValkey(t)
			l := ratelimit.New(testenv.ValkeyClient(t, v.URL()), ratelimit.Options{RetryInterval: time.Hour})
			if mode == "local" {
				v.Stop()
			}
			test(t, l)
		})
	}
}
