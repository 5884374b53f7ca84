package room

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// pruneStore answers PruneEvents only, recording the cut-off it was given.
type pruneStore struct {
	Store
	before time.Time
	n      int64
	err    error
}

func (s *pruneStore) PruneEvents(_ context.Context, before time.Time) (int64, error) {
	s.before = before
	return s.n, s.err
}

func TestPruneForgetsEventIDsOlderThanADay(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var logs bytes.Buffer
	store := &pruneStore{n: 3}
	s := NewService(store, nil, Options{Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	defer s.Close()

	s.Prune(t.Context())
	if want := now.Add(-24 * time.Hour); !store.before.Equal(want) {
		t.Errorf("pruned before %v, want %v", store.before, want)
	}
	if !strings.Contains(logs.String(), "pruned webhook events") || !strings.Contains(logs.String(), "count=3") {
		t.Errorf("log %q does not report the 3 pruned ids", logs.String())
	}

	logs.Reset()
	store.n, store.err = 0, errors.New("database down")
	s.Prune(t.Context())
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "database down") {
		t.Errorf("log %q does not warn of the failure", logs.String())
	}
}
