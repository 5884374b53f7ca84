package cache

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
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
		last, got, err := decodePage(id, encodePage(1234, p))
		if err != nil {
			t.Fatal(err)
		}
		if p.Messages == nil {
			p.Messages = []conversation.Message{}
		}
		if diff := cmp.Diff(p, got); diff != "" || last != 1234 {
			t.Errorf("round trip: last_seq %d (-want +got):\n%s", last, diff)
		}
	}
	b := encodePage(3, testPage(id, 3))
	for _, bad := range [][]byte{nil, {9}, b[:len(b)-1], append(append([]byte{}, b...), 0)} {
		if _, _, err := decodePage(id, bad); err == nil {
			t.Errorf("decodePage(%x) succeeded", bad)
		}
	}
}

func newTestPages(t *testing.T, url string) (*Pages, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := NewPages(testenv.ValkeyClient(t, url), time.Minute, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

// TestPagesHitMissAndOutage checks that a page is served only with a head
// that knows the owner and has the page's last_seq, and that a flushed or
// dead Valkey is a miss.
func TestPagesHitMissAndOutage(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	c, reg := newTestPages(t, v.URL())
	ctx := t.Context()
	owner := uuid.New()
	k := conversation.PageKey{ConversationID: uuid.New(), LastSeq: 10, Order: conversation.OrderNewestFirst, Size: 50}
	want := testPage(k.ConversationID, 5)
	// lookup reports the head and whether the page is current at it.
	lookup := func(k conversation.PageKey) (conversation.Head, bool, bool) {
		h, ok, got, pageSeq := c.Lookup(ctx, k)
		if pageSeq >= 0 {
			if diff := cmp.Diff(want, got); diff != "" || pageSeq != 10 {
				t.Errorf("cached page at %d (-want +got):\n%s", pageSeq, diff)
			}
		}
		return h, ok, ok && pageSeq == h.LastSeq
	}

	if _, ok, _ := lookup(k); ok { // miss 1
		t.Fatal("head found in an empty cache")
	}
	c.PutPage(ctx, k, want)
	if _, ok, got, pageSeq := c.Lookup(ctx, k); ok || pageSeq != 10 || len(got.Messages) != len(want.Messages) { // miss 2
		t.Fatalf("page without a head: head %v, page at %d", ok, pageSeq)
	}
	c.RecordHead(ctx, k.ConversationID, conversation.Head{Owner: owner, LastSeq: 10}, time.Now())
	h, ok, pageOK := lookup(k) // hit 1
	if !ok || !pageOK || h.Owner != owner || h.LastSeq != 10 || h.Deleted {
		t.Fatalf("after RecordHead: head %+v %v, page %v", h, ok, pageOK)
	}
	// Every field of the key but last_seq names another page.
	for _, other := range []conversation.PageKey{
		{ConversationID: k.ConversationID, Order: conversation.OrderOldestFirst, Size: k.Size},
		{ConversationID: k.ConversationID, Order: k.Order, Cursor: 5, Size: k.Size},
		{ConversationID: k.ConversationID, Order: k.Order, Size: 20},
	} {
		if _, ok, pageOK := lookup(other); !ok || pageOK { // misses 3-5
			t.Errorf("%+v: head %v, page %v; want the head only", other, ok, pageOK)
		}
	}
	// A saved turn retires the page.
	c.AdvanceHead(ctx, k.ConversationID, 12)
	if h, ok, pageOK := lookup(k); !ok || pageOK || h.LastSeq != 12 || h.Owner != owner { // miss 6
		t.Fatalf("after AdvanceHead: head %+v %v, page %v", h, ok, pageOK)
	}

	v.Flush()
	if _, ok, _ := lookup(k); ok { // miss 7
		t.Error("head found after FLUSHALL")
	}
	v.Stop()
	start := time.Now()
	if _, ok, _ := lookup(k); ok { // error 1
		t.Error("head found while Valkey is down")
	}
	c.PutPage(ctx, k, want)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a dead Valkey cost %v", d)
	}

	for result, n := range map[string]float64{"hit": 1, "miss": 7, "error": 1} {
		if got := counterValue(t, reg, result); got != n {
			t.Errorf("parley_cache_requests_total{result=%q} = %v, want %v", result, got, n)
		}
	}
}

// TestHeadsNeverGoBack checks the orders in which a reader's RecordHead (of
// a last_seq read before a commit) and the writer's AdvanceHead can land,
// and that a deleted conversation stays deleted.
func TestHeadsNeverGoBack(t *testing.T) {
	t.Parallel()
	c, _ := newTestPages(t, testenv.ValkeyURL(t))
	ctx := t.Context()
	owner := uuid.New()
	head := func(id uuid.UUID) (conversation.Head, bool) {
		h, ok, _, _ := c.Lookup(ctx, conversation.PageKey{ConversationID: id, Size: 50})
		return h, ok
	}

	// The writer advances first, the stale reader records after.
	a := uuid.New()
	c.AdvanceHead(ctx, a, 7)
	if _, ok := head(a); ok {
		t.Error("a head without its owner was served")
	}
	c.RecordHead(ctx, a, conversation.Head{Owner: owner, LastSeq: 5}, time.Now())
	if h, ok := head(a); !ok || h.LastSeq != 7 || h.Owner != owner {
		t.Errorf("advance then stale record: %+v %v, want last_seq 7 of %s", h, ok, owner)
	}

	// The stale reader records first, the writer advances after.
	b := uuid.New()
	c.RecordHead(ctx, b, conversation.Head{Owner: owner, LastSeq: 5}, time.Now())
	c.AdvanceHead(ctx, b, 7)
	c.AdvanceHead(ctx, b, 6) // a slower writer of an earlier turn
	if h, ok := head(b); !ok || h.LastSeq != 7 || h.Owner != owner {
		t.Errorf("record then advance: %+v %v, want last_seq 7", h, ok)
	}

	c.DeleteHead(ctx, b)
	c.RecordHead(ctx, b, conversation.Head{Owner: owner, LastSeq: 7}, time.Now()) // a reader from before the delete
	c.AdvanceHead(ctx, b, 9)
	if h, ok := head(b); !ok || !h.Deleted {
		t.Errorf("after delete: %+v %v, want deleted", h, ok)
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

// TestHeadWritesThatChangeNothing checks that a replay's advance to an older
// seq neither moves the head back nor extends its life (which would keep a
// head another writer failed to advance alive), and that a head read from
// PostgreSQL too long ago is not recorded.
func TestHeadWritesThatChangeNothing(t *testing.T) {
	t.Parallel()
	c, _ := newTestPages(t, testenv.ValkeyURL(t))
	ctx := t.Context()
	vc := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	id, owner := uuid.New(), uuid.New()
	pttl := func() int64 {
		t.Helper()
		n, err := vc.Do(ctx, vc.B().Pttl().Key(headKey(id)).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	c.RecordHead(ctx, id, conversation.Head{Owner: owner, LastSeq: 7}, time.Now())
	time.Sleep(300 * time.Millisecond)
	before := pttl()
	c.AdvanceHead(ctx, id, 5)
	c.AdvanceHead(ctx, id, 7)
	c.RecordHead(ctx, id, conversation.Head{Owner: owner, LastSeq: 6}, time.Now())
	if after := pttl(); after > before || after <= 0 {
		t.Errorf("PTTL %d ms after writes that change nothing, %d ms before", after, before)
	}
	if h, ok, _, _ := c.Lookup(ctx, conversation.PageKey{ConversationID: id, Size: 50}); !ok || h.LastSeq != 7 {
		t.Errorf("head %+v %v, want last_seq 7", h, ok)
	}

	other := uuid.New()
	c.RecordHead(ctx, other, conversation.Head{Owner: owner, LastSeq: 3}, time.Now().Add(-2*recordWindow))
	if _, ok, _, _ := c.Lookup(ctx, conversation.PageKey{ConversationID: other, Size: 50}); ok {
		t.Error("a head read long ago was recorded")
	}
	c.DeleteHead(ctx, other)
	if n, err := vc.Do(ctx, vc.B().Pttl().Key(headKey(other)).Build()).AsInt64(); err != nil || n < (deletedTTL-time.Minute).Milliseconds() {
		t.Errorf("deleted mark PTTL %d, %v; want about %v", n, err, deletedTTL)
	}
}

// TestAdvanceHeadWaitsOutAStaleHead checks that an advance Valkey does not
// take returns only once the head it could not move has expired.
func TestAdvanceHeadWaitsOutAStaleHead(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	c, _ := newTestPages(t, v.URL())
	ctx := t.Context()
	id := uuid.New()
	c.RecordHead(ctx, id, conversation.Head{Owner: uuid.New(), LastSeq: 4}, time.Now())
	v.Stop()
	start := time.Now()
	c.AdvanceHead(ctx, id, 6)
	if took := time.Since(start); took < headTTL || took > headTTL+recordWindow+2*time.Second {
		t.Errorf("AdvanceHead with Valkey down returned after %v, want between %v and about %v", took, headTTL, headTTL+recordWindow)
	}
}

// TestPagesOutageLogsOnce checks that a dead Valkey costs the log one line
// however many requests find it dead, and a request that gave up none.
func TestPagesOutageLogsOnce(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	var logs bytes.Buffer // slog's handler serialises the writes
	c, err := NewPages(testenv.ValkeyClient(t, v.URL()), time.Minute, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	k := conversation.PageKey{ConversationID: uuid.New(), LastSeq: 1, Size: 50}
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	v.Stop()
	c.Lookup(canceled, k)
	c.PutPage(canceled, k, testPage(k.ConversationID, 1))
	if logs.Len() != 0 {
		t.Fatalf("requests that gave up were logged:\n%s", logs.String())
	}
	// A few, so that they take less than outage.Interval: each waits for
	// its timeout.
	for range 5 {
		c.Lookup(t.Context(), k)
		c.PutPage(t.Context(), k, testPage(k.ConversationID, 1))
		c.RecordHead(t.Context(), k.ConversationID, conversation.Head{Owner: uuid.New(), LastSeq: 1}, time.Now())
	}
	if got := logs.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "level=WARN msg=\"page cache unavailable; reading PostgreSQL\"") {
		t.Errorf("15 failed calls logged:\n%s\nwant one warning", got)
	}
}

// BenchmarkPagesLookupHit is a cached ListMessages' whole use of Valkey.
func BenchmarkPagesLookupHit(b *testing.B) {
	client := testenv.ValkeyClient(b, testenv.ValkeyURL(b))
	c, err := NewPages(client, time.Minute, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	k := conversation.PageKey{ConversationID: uuid.New(), LastSeq: 1000, Order: conversation.OrderNewestFirst, Size: 50}
	c.PutPage(b.Context(), k, testPage(k.ConversationID, 50))
	c.RecordHead(b.Context(), k.ConversationID, conversation.Head{Owner: uuid.New(), LastSeq: 1000}, time.Now())
	b.ReportAllocs()
	for b.Loop() {
		if h, _, _, pageSeq := c.Lookup(b.Context(), k); pageSeq != h.LastSeq {
			b.Fatal("miss")
		}
	}
}

func BenchmarkEncodeDecodePage(b *testing.B) {
	id := uuid.New()
	p := testPage(id, 50)
	for b.Loop() {
		if _, _, err := decodePage(id, encodePage(7, p)); err != nil {
			b.Fatal(err)
		}
	}
}
