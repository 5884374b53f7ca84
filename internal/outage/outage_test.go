package outage

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// logLines returns the lines written to b.
func logLines(b *bytes.Buffer) []string {
	return strings.Split(strings.TrimSpace(b.String()), "\n")
}

func newLog(t *testing.T) (*Log, *clock, *bytes.Buffer) {
	t.Helper()
	c := &clock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	buf := &bytes.Buffer{} // slog's handler serialises the writes
	return New(slog.New(slog.NewTextHandler(buf, nil)), "valkey down", c.now), c, buf
}

func TestFailedLogsOncePerIntervalWithACount(t *testing.T) {
	t.Parallel()
	l, c, buf := newLog(t)
	ctx := context.Background()
	boom := errors.New("boom")
	l.Failed(ctx, boom)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				l.Failed(ctx, boom)
			}
		})
	}
	wg.Wait()
	if lines := logLines(buf); len(lines) != 1 || !strings.HasSuffix(lines[0], " failures=1") || !strings.Contains(lines[0], "level=WARN") {
		t.Fatalf("8001 failures within an interval logged %q, want one warning for the first", lines)
	}
	c.advance(Interval)
	l.Failed(ctx, boom)
	if lines := logLines(buf); len(lines) != 2 || !strings.HasSuffix(lines[1], " failures=8001") || !strings.Contains(lines[1], "error=boom") {
		t.Fatalf("after the interval: %q, want a line counting the 8000 unlogged failures and this one", lines)
	}
	l.Failed(ctx, boom)
	l.Recovered(ctx, "valkey back")
	l.Recovered(ctx, "valkey back")
	if lines := logLines(buf); len(lines) != 3 || !strings.Contains(lines[2], "valkey back") || !strings.HasSuffix(lines[2], " unlogged_failures=1") {
		t.Fatalf("recovery: %q, want one line with the failure not yet logged", lines)
	}
}

func TestFlappingDependencyStaysQuiet(t *testing.T) {
	t.Parallel()
	l, c, buf := newLog(t)
	ctx := context.Background()
	for range 1000 {
		l.Failed(ctx, errors.New("timeout"))
		l.Recovered(ctx, "answering again")
		c.advance(time.Millisecond) // 1000 rounds: one interval
	}
	if lines := logLines(buf); len(lines) != 2 {
		t.Fatalf("a dependency failing every other call for one interval logged %d lines, want 2: %q", len(lines), lines)
	}
}

func TestRecoveredWithoutFailureIsSilent(t *testing.T) {
	t.Parallel()
	l, _, buf := newLog(t)
	l.Recovered(context.Background(), "answering again")
	if lines := logLines(buf); len(lines) != 1 || lines[0] != "" {
		t.Fatalf("logged %q", lines)
	}
}

func BenchmarkFailedUnlogged(b *testing.B) {
	l := New(nil, "down", nil)
	ctx := context.Background()
	err := errors.New("boom")
	l.Failed(ctx, err)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Failed(ctx, err)
		}
	})
}
