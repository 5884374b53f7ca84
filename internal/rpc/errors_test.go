package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-dev/parley/internal/postgres"
)

// TestOutageIsUnavailable: a store's outage is retryable for clients, even
// when it surfaced as a deadline while connecting; its cause stays in the
// server's log, one line for many failing calls.
func TestOutageIsUnavailable(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	obs := newObserver(slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry())
	for _, err := range []error{
		fmt.Errorf("get user: %w", fmt.Errorf("%w: dial tcp: connection refused", postgres.ErrUnavailable)),
		fmt.Errorf("save turn: %w: %w", postgres.ErrUnavailable, context.DeadlineExceeded),
	} {
		got := toConnectError(t.Context(), slog.New(slog.DiscardHandler), err)
		var cerr *connect.Error
		if !errors.As(got, &cerr) || cerr.Code() != connect.CodeUnavailable || cerr.Message() != "database unavailable" {
			t.Errorf("toConnectError(%v) = %v, want unavailable: database unavailable", err, got)
		}
		for range 3 {
			obs.done(t.Context(), "/p/M", "id", "peer", time.Now(), got)
		}
	}
	if n := strings.Count(logs.String(), "msg=\"dependency unavailable\""); n != 1 || !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("log has %d dependency lines, want 1 with the cause:\n%s", n, logs.String())
	}
}
