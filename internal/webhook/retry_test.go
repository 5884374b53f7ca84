package webhook

import (
	"testing"
	"time"
)

func TestNextAttempt(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 15 * time.Second, 30 * time.Second},
		{2, 30 * time.Second, time.Minute},
		{3, time.Minute, 2 * time.Minute},
		{8, 30 * time.Minute, time.Hour},
		{9, 30 * time.Minute, time.Hour},
		{60, 30 * time.Minute, time.Hour},
	} {
		for _, j := range []float64{0, 0.5, 0.999} {
			next, park := NextAttempt(created, created, c.attempt, j)
			if d := next.Sub(created); park || d < c.min || d > c.max {
				t.Errorf("attempt %d jitter %v: retry after %v (park %v), want %v..%v", c.attempt, j, d, park, c.min, c.max)
			}
		}
	}
	if _, park := NextAttempt(created, created.Add(RetryWindow-time.Second), 40, 0.5); park {
		t.Error("parked before RetryWindow")
	}
	if _, park := NextAttempt(created, created.Add(RetryWindow), 40, 0.5); !park {
		t.Error("not parked once RetryWindow has passed")
	}
	// With the least jitter every time, retries still span the window:
	// the attempt that parks comes at least RetryWindow after the event.
	now, attempts := created, 1
	for {
		next, park := NextAttempt(created, now, attempts, 0)
		if park {
			break
		}
		now, attempts = next, attempts+1
	}
	if now.Sub(created) < RetryWindow || attempts > 80 {
		t.Fatalf("parked after %d attempts over %v, want at least %v and a bounded count", attempts, now.Sub(created), RetryWindow)
	}
}
