package cache

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func testPage(conversationID uuid.UUID, n int) conversation.CachedPage {
	p := conversation.CachedPage{More: true}
	for i := range n {
		p.Messages = append(p.Messages, conversation.Message{
			ID: uuid.Must(uuid.NewV7()), ConversationID: conversationID, Seq: int64(1000 - i),
			Role: conversation.Role(1 + i%2), Content: "héllo " + string(rune('a'+i%26)),
			TurnID:    map[bool]string{true: "turn-x", false: ""}[i%3 == 0],
			CreatedAt: time.Date(2026, 11, 25, 10, 0, i, 123456000, time.UTC),
		})
	}
	return p
}

func TestEncodeDecodePage(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	for _, p := range []conversation.CachedPage{{}, testPage(id, 1), testPage(id, 200)} {
		got, err := decodePage(id, encodePage(p))
		if err != nil {
			t.Fatal(err)
		}
		if p.Messages == nil {
			p.Messages = []conversation.Message{}
		}
		if diff := cmp.Diff(p, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	b := encodePage(testPage(id, 3))
	for _, bad := range [][]byte{nil, {9}, b[:len(b)-1], append(append([]byte{}, b...), 0)} {
		if _, err := decodePage(id, bad); err == nil {
			t.Errorf("decodePage(%x) succeeded", bad)
		}
	}
}

func TestPagesHitMissAndOutage(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	reg := prometheus.NewRegistry()
	c, err := NewPages(testenv.ValkeyClient(t, v.URL()), time.Minute, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	k := conversation.PageKey{ConversationID: uuid.New(), LastSeq: 10, Order: conversation.OrderNewestFirst, Size: 50}
	want := testPage(k.ConversationID, 5)

	if _, ok := c.GetPage(ctx, k); ok {
		t.Fatal("hit on an empty cache")
	}
	c.PutPage(ctx, k, want)
	got, ok := c.GetPage(ctx, k)
	if !ok {
		t.Fatal("miss after PutPage")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cached page (-want +got):\n%s", diff)
	}
	// Every field of the key matters.
	for _, other := range []conversation.PageKey{
		{ConversationID: k.ConversationID, LastSeq: 11, Order: k.Order, Size: k.Size},
		{ConversationID: k.ConversationID, LastSeq: 10, Order: conversation.OrderOldestFirst, Size: k.Size},
		{ConversationID: k.ConversationID, LastSeq: 10, Order: k.Order, Cursor: 5, Size: k.Size},
		{ConversationID: k.ConversationID, LastSeq: 10, Order: k.Order, Size: 20},
	} {
		if _, ok := c.GetPage(ctx, other); ok {
			t.Errorf("hit for %+v", other)
		}
	}

	v.Flush()
	if _, ok := c.GetPage(ctx, k); ok {
		t.Error("hit after FLUSHALL")
	}
	v.Stop()
	start := time.Now()
	if _, ok := c.GetPage(ctx, k); ok {
		t.Error("hit while Valkey is down")
	}
	c.PutPage(ctx, k, want)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a dead Valkey cost %v", d)
	}

	for result, n := range map[string]float64{"hit": 1, "miss": 6, "error": 1} {
		if got := counterValue(t, reg, result); got != n {
			t.Errorf("parley_cache_requests_total{result=%q} = %v, want %v", result, got, n)
		}
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "parley_cache_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelIs(m, "result", result) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func BenchmarkPagesGetHit(b *testing.B) {
	client := testenv.ValkeyClient(b, testenv.ValkeyURL(b))
	c, err := NewPages(client, time.Minute, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	k := conversation.PageKey{ConversationID: uuid.New(), LastSeq: 1000, Order: conversation.OrderNewestFirst, Size: 50}
	c.PutPage(b.Context(), k, testPage(k.ConversationID, 50))
	for b.Loop() {
		if _, ok := c.GetPage(b.Context(), k); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkEncodeDecodePage(b *testing.B) {
	id := uuid.New()
	p := testPage(id, 50)
	for b.Loop() {
		if _, err := decodePage(id, encodePage(p)); err != nil {
			b.Fatal(err)
		}
	}
}
