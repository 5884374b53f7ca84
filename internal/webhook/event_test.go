package webhook

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestNewEvent(t *testing.T) {
	t.Parallel()
	user := uuid.New()
	at := time.Date(2026, 12, 2, 1, 2, 3, 456000000, time.FixedZone("x", 3600))
	ev, err := NewEvent(user, CallEnded, json.RawMessage(`{"call_id":"c1"}`), at)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"call.ended","timestamp":"2026-12-02T00:02:03.456Z","data":{"call_id":"c1"}}`; string(ev.Payload) != want {
		t.Fatalf("payload %s, want %s", ev.Payload, want)
	}
	if ev.UserID != user || ev.Type != CallEnded || !ev.CreatedAt.Equal(at) || ev.ID.Version() != 7 {
		t.Fatalf("event %+v", ev)
	}
	for name, c := range map[string]struct {
		typ  string
		data string
	}{
		"unknown type": {"call.exploded", `{}`},
		"not JSON":     {CallEnded, `{"a":`},
		"not object":   {CallEnded, `[1]`},
		"empty":        {CallEnded, ``},
		"too large":    {CallEnded, `{"a":"` + strings.Repeat("x", MaxEventDataBytes) + `"}`},
	} {
		if _, err := NewEvent(user, c.typ, json.RawMessage(c.data), at); err == nil {
			t.Errorf("%s: NewEvent succeeded", name)
		}
	}
}
