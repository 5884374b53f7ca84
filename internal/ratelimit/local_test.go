package ratelimit

import (
	"bytes"
	"errors"
	"hash/maphash"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/limit"
)

// fakeClock is a settable clock for the local limiter.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func mustParams(t testing.TB, lim limit.Limit) gcraParams {
	t.Helper()
	p, err := params(lim)
	if err != nil {
		t.Fatalf("params(%+v): %v", lim, err)
	}
	return p
}

func TestLocalBurstRefusalRefill(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	l := newLocalLimiter(DefaultMaxLocalKeys)
	p := mustParams(t, limit.PerMinute(60))

	for i := range 60 {
		d := l.allow(clock.Now(), "k", p)
		want := limit.Decision{Allowed: true, Limit: 60, Remaining: 59 - i, ResetAfter: time.Duration(i+1) * time.Second}
		if d != want {
			t.Fatalf("request %d: got %+v, want %+v", i+1, d, want)
		}
	}
	d := l.allow(clock.Now(), "k", p)
	if want := (limit.Decision{Limit: 60, RetryAfter: time.Second, ResetAfter: time.Minute}); d != want {
		t.Fatalf("request 61: got %+v, want %+v", d, want)
	}

	// Refill is smooth: a quarter second buys nothing, a full second one request.
	clock.Advance(250 * time.Millisecond)
	if d := l.allow(clock.Now(), "k", p); d.Allowed || d.RetryAfter != 750*time.Millisecond {
		t.Fatalf("after 250ms: got %+v, want refused with RetryAfter 750ms", d)
	}
	clock.Advance(750 * time.Millisecond)
	if d := l.allow(clock.Now(), "k", p); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after 1s: got %+v, want allowed with Remaining 0", d)
	}
	if d := l.allow(clock.Now(), "k", p); d.Allowed {
		t.Fatalf("second request after 1s: got %+v, want refused", d)
	}

	clock.Advance(time.Minute)
	if d := l.allow(clock.Now(), "k", p); !d.Allowed || d.Remaining != 59 {
		t.Fatalf("after an idle minute: got %+v, want allowed with Remaining 59", d)
	}
}

func TestLocalBurstSmallerThanRate(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	l := newLocalLimiter(DefaultMaxLocalKeys)
	p := mustParams(t, limit.Limit{Rate: 60, Period: time.Minute, Burst: 5})

	allowed := 0
	for range 20 {
		if l.allow(clock.Now(), "k", p).Allowed {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("allowed %d at once, want burst 5", allowed)
	}
}

// A fixed window lets a client spend a full window's budget just before the
// boundary and another just after it. GCRA has no boundary to exploit.
func TestLocalNoDoubleBurstAtBoundary(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0).Add(999 * time.Millisecond)}
	l := newLocalLimiter(DefaultMaxLocalKeys)
	p := mustParams(t, limit.Limit{Rate: 10, Period: time.Second})

	count := func() int {
		n := 0
		for range 20 {
			if l.allow(clock.Now(), "k", p).Allowed {
				n++
			}
		}
		return n
	}
	if n := count(); n != 10 {
		t.Fatalf("first burst allowed %d, want 10", n)
	}
	clock.Advance(2 * time.Millisecond) // across the wall-clock second
	if n := count(); n != 0 {
		t.Fatalf("2ms later, across the boundary, allowed %d, want 0", n)
	}
	clock.Advance(250 * time.Millisecond)
	if n := count(); n != 2 {
		t.Fatalf("252ms after the burst allowed %d, want 2 (one per 100ms)", n)
	}
}

func TestLocalKeysIndependent(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	l := newLocalLimiter(DefaultMaxLocalKeys)
	p := mustParams(t, limit.Limit{Rate: 1, Period: time.Minute})

	if d := l.allow(now, "a", p); !d.Allowed {
		t.Fatalf("a: got %+v, want allowed", d)
	}
	if d := l.allow(now, "a", p); d.Allowed {
		t.Fatalf("a again: got %+v, want refused", d)
	}
	if d := l.allow(now, "b", p); !d.Allowed {
		t.Fatalf("b: got %+v, want allowed", d)
	}
}

func TestLocalMemoryBounded(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	const maxKeys = 4 * localShards
	l := newLocalLimiter(maxKeys)
	p := mustParams(t, limit.PerMinute(100))

	for i := range 10_000 {
		l.allow(clock.Now(), strconv.Itoa(i), p)
	}
	if n := l.len(); n > maxKeys {
		t.Fatalf("holding %d keys, want at most %d", n, maxKeys)
	}

	// A busy key survives a flood of one-off keys better than they do: it
	// is far from refilled, and eviction picks the entry nearest to refilled.
	for range 50 {
		l.allow(clock.Now(), "busy", p)
	}
	for i := range 1000 {
		l.allow(clock.Now(), "flood"+strconv.Itoa(i), p)
	}
	if d := l.allow(clock.Now(), "busy", p); d.Remaining != 49 {
		t.Fatalf("busy key forgotten: got %+v", d)
	}

	// Once every bucket has refilled, the periodic sweep forgets them all:
	// touching one key per shard leaves just those keys.
	clock.Advance(localSweepEvery + time.Minute)
	for i := range localShards {
		l.allow(clock.Now(), keyInShard(l, i), p)
	}
	if n := l.len(); n != localShards {
		t.Fatalf("after refill and sweep, holding %d keys, want %d", n, localShards)
	}
}

func keyInShard(l *localLimiter, shard int) string {
	for i := 0; ; i++ {
		k := "s" + strconv.Itoa(i)
		if maphash.String(l.seed, k)%localShards == uint64(shard) {
			return k
		}
	}
}

func TestLimitParams(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lim     limit.Limit
		want    gcraParams
		wantErr bool
	}{
		{lim: limit.PerMinute(60), want: gcraParams{interval: time.Second, burst: 60}},
		{lim: limit.PerMinute(6000), want: gcraParams{interval: 10 * time.Millisecond, burst: 6000}},
		{lim: limit.Limit{Rate: 10, Period: time.Second, Burst: 3}, want: gcraParams{interval: 100 * time.Millisecond, burst: 3}},
		{lim: limit.Limit{}, wantErr: true},
		{lim: limit.Limit{Rate: 0, Period: time.Minute}, wantErr: true},
		{lim: limit.Limit{Rate: -1, Period: time.Minute}, wantErr: true},
		{lim: limit.Limit{Rate: 10, Period: 0}, wantErr: true},
		{lim: limit.Limit{Rate: 10, Period: time.Minute, Burst: -1}, wantErr: true},
		{lim: limit.Limit{Rate: 1_000_000_000, Period: time.Second}, wantErr: true},
	} {
		got, err := params(tc.lim)
		if tc.wantErr {
			if !errors.Is(err, ErrInvalidLimit) {
				t.Errorf("params(%+v): err %v, want ErrInvalidLimit", tc.lim, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("params(%+v) = %+v, %v; want %+v", tc.lim, got, err, tc.want)
		}
	}
}

func BenchmarkLocal(b *testing.B) {
	l := newLocalLimiter(DefaultMaxLocalKeys)
	p := mustParams(b, limit.PerMinute(1_000_000))
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.allow(time.Now(), keys[i%len(keys)], p)
			i++
		}
	})
}

func TestOutageBookkeeping(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	l := New(nil, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), RetryInterval: time.Second})
	t0 := time.Unix(1_800_000_000, 0)

	if !l.shouldTryValkey(t0) {
		t.Fatal("healthy limiter does not try Valkey")
	}
	ctx := t.Context()
	l.unhealthy(ctx, t0.Add(time.Millisecond), errors.New("boom"))
	l.unhealthy(ctx, t0.Add(2*time.Millisecond), errors.New("boom"))
	// A reply to a call begun before the failure is no sign of recovery.
	l.healthy(ctx, t0)
	if l.shouldTryValkey(t0.Add(500 * time.Millisecond)) {
		t.Fatal("tried Valkey before the retry interval passed")
	}
	probe := t0.Add(1100 * time.Millisecond)
	if !l.shouldTryValkey(probe) {
		t.Fatal("no probe after the retry interval")
	}
	if l.shouldTryValkey(probe) {
		t.Fatal("two probes in one retry interval")
	}
	l.healthy(ctx, probe)
	l.healthy(ctx, probe.Add(time.Millisecond))
	if !l.shouldTryValkey(probe.Add(time.Millisecond)) {
		t.Fatal("recovered limiter does not try Valkey")
	}
	got := logs.String()
	if strings.Count(got, "level=WARN msg=\"rate limiter falling back to local limits\" error=boom") != 1 ||
		strings.Count(got, "level=INFO msg=\"rate limiter using Valkey again\"") != 1 ||
		strings.Count(got, "level=") != 2 {
		t.Fatalf("want one warning and one recovery notice, got:\n%s", got)
	}
}
