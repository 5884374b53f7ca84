package conversation

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// memItems serves ListItems' newest-first reads over items (seq order), as
// the store does, and counts the reads.
type memItems struct {
	items []Item
	reads int
}

func (m *memItems) list(_ context.Context, r ItemRange) ([]Item, error) {
	m.reads++
	if r.Order != OrderNewestFirst || r.Limit <= 0 {
		return nil, fmt.Errorf("unexpected range %+v", r)
	}
	var out []Item
	for i := len(m.items) - 1; i >= 0 && len(out) < r.Limit; i-- {
		it := m.items[i]
		if it.Seq > r.After && (r.Before == 0 || it.Seq < r.Before) {
			out = append(out, it)
		}
	}
	return out, nil
}

// conv builds items from a compact spec: "u" user, "a" assistant, "s"
// system, "d" developer message, "cX" a call and "oX" an output of call_id
// X; each item's payload is 10 bytes.
func conv(spec string) []Item {
	var items []Item
	for i, f := range strings.Fields(spec) {
		it := Item{Seq: int64(i + 1), ID: fmt.Sprintf("i%d", i+1), Kind: ItemMessage, Payload: []byte("0123456789")}
		switch f[0] {
		case 'u':
			it.Role = RoleUser
		case 'a':
			it.Role = RoleAssistant
		case 's':
			it.Role = RoleSystem
		case 'd':
			it.Role = RoleDeveloper
		case 'c':
			it.Kind, it.CallID = ItemFunctionCall, f[1:]
		case 'o':
			it.Kind, it.CallID = ItemFunctionCallOutput, f[1:]
		case 'h':
			it.Kind = ItemAgentHandoff
		}
		items = append(items, it)
	}
	return items
}

func seqs(items []Item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	return out
}

func TestSelectContext(t *testing.T) {
	for _, tc := range []struct {
		name      string
		spec      string
		r         ChatContextRequest
		want      []int64
		truncated bool
	}{
		{"all by default", "s u a u a", ChatContextRequest{}, []int64{1, 2, 3, 4, 5}, false},
		{"empty", "", ChatContextRequest{}, nil, false},
		{"last two", "s u a u a", ChatContextRequest{MaxItems: 2}, []int64{4, 5}, true},
		{"exactly all", "u a", ChatContextRequest{MaxItems: 2}, []int64{1, 2}, false},
		{"after", "s u a u a", ChatContextRequest{AfterSeq: 3}, []int64{4, 5}, false},
		{"until", "s u a u a", ChatContextRequest{UntilSeq: 3}, []int64{1, 2, 3}, false},
		{"after and until", "s u a u a", ChatContextRequest{AfterSeq: 1, UntilSeq: 4}, []int64{2, 3, 4}, false},
		{"until past the end", "u a", ChatContextRequest{UntilSeq: 9}, []int64{1, 2}, false},
		{"bytes", "s u a u a", ChatContextRequest{MaxBytes: 35}, []int64{3, 4, 5}, true},
		{"bytes too small for one", "u a", ChatContextRequest{MaxBytes: 9}, nil, true},
		{"both budgets, items bind", "u a u a", ChatContextRequest{MaxItems: 1, MaxBytes: 100}, []int64{4}, true},
		{"no instructions", "s d u s a", ChatContextRequest{ExcludeInstructions: true}, []int64{3, 5}, false},
		// Excluded instructions count against no budget and truncate nothing.
		{"no instructions, budget", "u s d a", ChatContextRequest{ExcludeInstructions: true, MaxItems: 2}, []int64{1, 4}, false},
		{"no instructions, cut", "u u s d a", ChatContextRequest{ExcludeInstructions: true, MaxItems: 2}, []int64{2, 5}, true},
		// A cut between a call and its output moves past the output.
		{"cut splits a pair", "u c1 o1 a", ChatContextRequest{MaxItems: 2}, []int64{4}, true},
		{"cut keeps a pair", "u c1 o1 a", ChatContextRequest{MaxItems: 3}, []int64{2, 3, 4}, true},
		{"pending call kept", "u a c1", ChatContextRequest{MaxItems: 1}, []int64{3}, true},
		{"cut splits by bytes", "u c1 o1 a", ChatContextRequest{MaxBytes: 25}, []int64{4}, true},
		// Parallel calls: cutting between the calls leaves both outputs
		// without a call in the kept part only for the first.
		{"parallel calls", "u c1 c2 o1 o2 a", ChatContextRequest{MaxItems: 4}, []int64{6}, true},
		{"parallel calls fit", "u c1 c2 o1 o2 a", ChatContextRequest{MaxItems: 5}, []int64{2, 3, 4, 5, 6}, true},
		{"interleaved", "u c1 o1 c2 o2 a", ChatContextRequest{MaxItems: 4}, []int64{4, 5, 6}, true},
		// An output whose call was never stored is kept when nothing is cut.
		{"orphan output uncut", "o9 u a", ChatContextRequest{}, []int64{1, 2, 3}, false},
		// The caller's own after_seq cut is taken as it is.
		{"after splits a pair", "u c1 o1 a", ChatContextRequest{AfterSeq: 2}, []int64{3, 4}, false},
		// A call id used again pairs an output with the latest call before it.
		{"reused call id", "c1 o1 u c1 o1", ChatContextRequest{MaxItems: 3}, []int64{3, 4, 5}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &memItems{items: conv(tc.spec)}
			b, err := contextBudget(tc.r)
			if err != nil {
				t.Fatal(err)
			}
			rng := ItemRange{Order: OrderNewestFirst, After: tc.r.AfterSeq}
			if tc.r.UntilSeq > 0 {
				rng.Before = tc.r.UntilSeq + 1
			}
			cc, err := selectContext(context.Background(), m.list, rng, b, tc.r.ExcludeInstructions)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(cc.Items); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Fatalf("seqs = %v, want %v", got, tc.want)
			}
			if cc.Truncated != tc.truncated {
				t.Fatalf("truncated = %v, want %v", cc.Truncated, tc.truncated)
			}
			var first, last int64
			if len(tc.want) > 0 {
				first, last = tc.want[0], tc.want[len(tc.want)-1]
			}
			if cc.FirstSeq != first || cc.LastSeq != last {
				t.Fatalf("first, last = %d, %d, want %d, %d", cc.FirstSeq, cc.LastSeq, first, last)
			}
		})
	}
}

func TestSelectContextPagesAndDefaults(t *testing.T) {
	spec := strings.Repeat("u a ", 700) // 1400 items, more than a read page
	m := &memItems{items: conv(spec)}
	b, _ := contextBudget(ChatContextRequest{})
	cc, err := selectContext(context.Background(), m.list, ItemRange{Order: OrderNewestFirst}, b, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(cc.Items) != DefaultContextItems || !cc.Truncated || cc.LastSeq != 1400 || cc.FirstSeq != 401 {
		t.Fatalf("default budget kept %d items (%d..%d, truncated %v), want the newest %d", len(cc.Items), cc.FirstSeq, cc.LastSeq, cc.Truncated, DefaultContextItems)
	}
	if m.reads != 3 {
		t.Fatalf("%d reads, want 3 of at most %d", m.reads, contextReadPage)
	}
}

func TestContextBudgetRefuses(t *testing.T) {
	for _, r := range []ChatContextRequest{
		{MaxItems: -1}, {MaxItems: MaxContextItems + 1}, {MaxBytes: -1}, {MaxBytes: MaxContextBytes + 1},
		{AfterSeq: -1}, {UntilSeq: -1}, {AfterSeq: 5, UntilSeq: 5},
	} {
		if _, err := contextBudget(r); err == nil {
			t.Errorf("contextBudget(%+v) accepted", r)
		}
	}
}

// TestPairedStartIsTheLongestPairedSuffix checks pairedStart against the
// definition, by brute force over random conversations.
func TestPairedStartIsTheLongestPairedSuffix(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	kinds := []string{"u", "a", "c1", "c2", "c3", "o1", "o2", "o3"}
	for range 5000 {
		var f []string
		for range r.IntN(12) {
			f = append(f, kinds[r.IntN(len(kinds))])
		}
		items := conv(strings.Join(f, " "))
		want := len(items)
		for s := len(items); s >= 0; s-- {
			if paired(items[s:]) {
				want = s
			}
		}
		if got := pairedStart(items); got != want {
			t.Fatalf("pairedStart(%v) = %d, want %d", f, got, want)
		}
	}
}

// paired reports whether every output in items has a call of its call_id
// before it in items.
func paired(items []Item) bool {
	for i, it := range items {
		if it.Kind != ItemFunctionCallOutput {
			continue
		}
		if !slices.ContainsFunc(items[:i], func(c Item) bool { return c.Kind == ItemFunctionCall && c.CallID == it.CallID }) {
			return false
		}
	}
	return true
}
