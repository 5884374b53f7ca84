package webhook_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/webhook"
)

func TestItemBatchDueAtAndNext(t *testing.T) {
	opened := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		first, last int64
		due         time.Time
		head, rest  [2]int64
		more        bool
		restDue     time.Time
	}{
		{first: 1, last: 1, due: opened.Add(webhook.ItemsWindow), head: [2]int64{1, 1}},
		{first: 7, last: 105, due: opened.Add(webhook.ItemsWindow), head: [2]int64{7, 105}},
		{first: 7, last: 106, due: opened, head: [2]int64{7, 106}},
		{first: 7, last: 107, due: opened, head: [2]int64{7, 106}, rest: [2]int64{107, 107}, more: true, restDue: opened.Add(webhook.ItemsWindow)},
		{first: 1, last: 250, due: opened, head: [2]int64{1, 100}, rest: [2]int64{101, 250}, more: true, restDue: opened},
	} {
		b := webhook.ItemBatch{FirstSeq: tc.first, LastSeq: tc.last, OpenedAt: opened}
		if got := b.DueAt(); !got.Equal(tc.due) {
			t.Errorf("%d..%d due at %v, want %v", tc.first, tc.last, got, tc.due)
		}
		head, rest, more := b.Next()
		if [2]int64{head.FirstSeq, head.LastSeq} != tc.head || more != tc.more {
			t.Errorf("%d..%d: head %d..%d more %v, want %v more %v", tc.first, tc.last, head.FirstSeq, head.LastSeq, more, tc.head, tc.more)
		}
		if more && ([2]int64{rest.FirstSeq, rest.LastSeq} != tc.rest || !rest.DueAt().Equal(tc.restDue)) {
			t.Errorf("%d..%d: rest %d..%d due %v, want %v due %v", tc.first, tc.last, rest.FirstSeq, rest.LastSeq, rest.DueAt(), tc.rest, tc.restDue)
		}
	}
}

// The event is the standard envelope around the batch's range and items,
// small enough for MaxEventDataBytes at the longest ids.
func TestNewItemsAppendedEvent(t *testing.T) {
	b := webhook.ItemBatch{ConversationID: uuid.New(), UserID: uuid.New(), FirstSeq: 11, LastSeq: 10 + webhook.MaxItemsPerEvent}
	items := make([]webhook.AppendedItem, webhook.MaxItemsPerEvent)
	for i := range items {
		items[i] = webhook.AppendedItem{ID: strings.Repeat("x", 128), Type: "function_call_output"}
	}
	now := time.Now()
	ev, err := webhook.NewItemsAppendedEvent(b, items, now)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Type string                    `json:"type"`
		Data webhook.ItemsAppendedData `json:"data"`
	}
	if err := json.Unmarshal(ev.Payload, &body); err != nil {
		t.Fatal(err)
	}
	if ev.Type != webhook.ItemsAppended || ev.UserID != b.UserID || body.Type != webhook.ItemsAppended ||
		body.Data.ConversationID != b.ConversationID || body.Data.FirstSeq != 11 || body.Data.LastSeq != 110 ||
		body.Data.ItemCount != webhook.MaxItemsPerEvent || len(body.Data.Items) != webhook.MaxItemsPerEvent {
		t.Errorf("event %+v, body %+v", ev, body)
	}
	if !strings.Contains(string(ev.Payload), `"items":[{"id":"xxx`) {
		t.Errorf("payload %.200s", ev.Payload)
	}
}
