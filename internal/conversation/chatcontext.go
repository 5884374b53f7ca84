package conversation

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// Bounds of GetChatContext. A request that sets no item or byte budget gets
// the default one, so that a long conversation never answers more than a
// client can take (a chat context's response holds its items twice, as
// proto and as livekit-agents JSON, and gRPC clients take 4 MiB by default).
const (
	DefaultContextItems = 1000
	MaxContextItems     = 10000
	// DefaultContextBytes and MaxContextBytes bound the items' payloads
	// together.
	DefaultContextBytes = 1 << 20
	MaxContextBytes     = 4 << 20
	// contextReadPage is how many items one store read fetches.
	contextReadPage = 500
)

// ChatContextRequest selects the items of GetChatContext: those with
// AfterSeq < seq <= UntilSeq (0 for the newest), instructions left out if
// asked, then the newest of them that fit both budgets.
type ChatContextRequest struct {
	ConversationID uuid.UUID
	// MaxItems is 0 for DefaultContextItems; at most MaxContextItems.
	MaxItems int
	// MaxBytes bounds the sum of the items' payload sizes; 0 for
	// DefaultContextBytes, at most MaxContextBytes.
	MaxBytes int64
	AfterSeq int64
	UntilSeq int64
	// ExcludeInstructions leaves out system and developer messages; they
	// then count against no budget.
	ExcludeInstructions bool
}

// ChatContext is GetChatContext's answer.
type ChatContext struct {
	// Items are oldest first.
	Items []Item
	// FirstSeq and LastSeq are the seqs of the first and last item, 0 when
	// there is none.
	FirstSeq, LastSeq int64
	// Truncated is true when a budget left out older items of the range.
	Truncated bool
}

// GetChatContext returns the newest items of a conversation p may reach
// that fit r's budgets, oldest first: what an agent restores its chat
// context from.
//
// The items kept are the newest ones in a row: a budget stops at the first
// item that does not fit, never skipping it for an older smaller one. When
// a budget cuts the range, a function call output is kept only with its call
// (the latest call of its call_id before it): the cut moves newer, past any
// output whose call it would leave out, since a model refuses an output
// without its call. A call kept without its output is kept (the output may
// not exist yet). AfterSeq and UntilSeq are the caller's own cuts and are
// taken as they are: an agent asking for what follows AfterSeq has the
// calls before it.
func (s *Service) GetChatContext(ctx context.Context, p auth.Principal, r ChatContextRequest) (ChatContext, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return ChatContext{}, err
	}
	b, err := contextBudget(r)
	if err != nil {
		return ChatContext{}, err
	}
	rng := ItemRange{ConversationID: r.ConversationID, Scope: scope, Order: OrderNewestFirst, After: r.AfterSeq}
	if r.UntilSeq > 0 {
		rng.Before = r.UntilSeq + 1
	}
	return selectContext(ctx, s.store.ListItems, rng, b, r.ExcludeInstructions)
}

// selectContext reads the items of rng newest first, through list, until
// the budget is spent, and returns what GetChatContext answers.
func selectContext(ctx context.Context, list func(context.Context, ItemRange) ([]Item, error), rng ItemRange, b budget, excludeInstructions bool) (ChatContext, error) {
	var (
		newest    []Item // newest first
		truncated bool
		bytes     int64
	)
read:
	for {
		rng.Limit = min(b.items-len(newest)+1, contextReadPage)
		page, err := list(ctx, rng)
		if err != nil {
			return ChatContext{}, fmt.Errorf("read chat context: %w", err)
		}
		for _, it := range page {
			if excludeInstructions && isInstruction(it) {
				continue
			}
			if len(newest) == b.items || bytes+int64(len(it.Payload)) > b.bytes {
				truncated = true
				break read
			}
			newest = append(newest, it)
			bytes += int64(len(it.Payload))
		}
		if len(page) < rng.Limit {
			break
		}
		rng.Before = page[len(page)-1].Seq
	}
	items := make([]Item, len(newest))
	for i, it := range newest {
		items[len(newest)-1-i] = it
	}
	if truncated {
		items = items[pairedStart(items):]
	}
	cc := ChatContext{Items: items, Truncated: truncated}
	if len(items) > 0 {
		cc.FirstSeq, cc.LastSeq = items[0].Seq, items[len(items)-1].Seq
	}
	return cc, nil
}

type budget struct {
	items int
	bytes int64
}

func contextBudget(r ChatContextRequest) (budget, error) {
	switch {
	case r.MaxItems < 0 || r.MaxItems > MaxContextItems:
		return budget{}, invalid(fmt.Sprintf("max_items must be 0 (for %d) to %d", DefaultContextItems, MaxContextItems))
	case r.MaxBytes < 0 || r.MaxBytes > MaxContextBytes:
		return budget{}, invalid(fmt.Sprintf("max_bytes must be 0 (for %d) to %d", DefaultContextBytes, MaxContextBytes))
	case r.AfterSeq < 0 || r.UntilSeq < 0:
		return budget{}, invalid("after_seq and until_seq must not be negative")
	case r.UntilSeq > 0 && r.UntilSeq <= r.AfterSeq:
		return budget{}, invalid("until_seq must be greater than after_seq")
	}
	b := budget{items: r.MaxItems, bytes: r.MaxBytes}
	if b.items == 0 {
		b.items = DefaultContextItems
	}
	if b.bytes == 0 {
		b.bytes = DefaultContextBytes
	}
	return b, nil
}

// isInstruction reports whether it is a system or developer message.
func isInstruction(it Item) bool {
	return it.Kind == ItemMessage && (it.Role == RoleSystem || it.Role == RoleDeveloper)
}

// pairedStart returns the smallest start such that items[start:] keeps no
// function call output without its call: for each output, the latest call
// of its call_id before it, if any, must be at or after start.
func pairedStart(items []Item) int {
	// callAt[i] is the position of output i's call, -1 when there is none
	// before it; other items need nothing.
	callAt := make([]int, len(items))
	last := map[string]int{}
	for i, it := range items {
		callAt[i] = i
		switch it.Kind {
		case ItemFunctionCall:
			last[it.CallID] = i
		case ItemFunctionCallOutput:
			c, ok := last[it.CallID]
			if !ok {
				c = -1
			}
			callAt[i] = c
		}
	}
	// items[s:] is paired when every output at or after s has its call at or
	// after s, i.e. when the least callAt from s on is at least s.
	start, least := len(items), len(items)
	for s := len(items) - 1; s >= 0; s-- {
		least = min(least, callAt[s])
		if least >= s {
			start = s
		}
	}
	return start
}
