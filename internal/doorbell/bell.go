package doorbell

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/outage"
)

// Channel is the one Valkey channel every replica's doorbell uses.
const Channel = "parley:doorbell:conversations"

const (
	// DefaultRecheck is how often a replica compares its watched
	// conversations with PostgreSQL when no ring comes.
	DefaultRecheck = 3 * time.Second
	// publishTimeout bounds a PUBLISH; a lost ring only delays watchers.
	publishTimeout = time.Second
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 5 * time.Second
)

// Bell is a replica's doorbell: it publishes rings after committed changes
// and, while Run runs, holds the replica's one subscription and passes every
// ring to the Hub. It implements conversation.Notifier.
type Bell struct {
	client  valkey.Client
	hub     *Hub
	recheck time.Duration
	log     *slog.Logger
	// publishFailed logs failed publishes, one per SaveTurn while Valkey is
	// down, at most once per outage.Interval.
	publishFailed *outage.Log
}

var _ conversation.Notifier = (*Bell)(nil)

// NewBell returns a Bell publishing with client and ringing hub. recheck is
// the period of the hub's re-check (0 for DefaultRecheck).
func NewBell(client valkey.Client, hub *Hub, recheck time.Duration, log *slog.Logger) *Bell {
	if recheck <= 0 {
		recheck = DefaultRecheck
	}
	return &Bell{client: client, hub: hub, recheck: recheck, log: log,
		publishFailed: outage.New(log, "doorbell: publish failed; watchers elsewhere catch up at the next re-check", nil)}
}

// Notify implements conversation.Notifier: it rings this replica's hub at
// once and the other replicas through Valkey.
func (b *Bell) Notify(ctx context.Context, id uuid.UUID, lastSeq int64) {
	b.hub.Ring(id, lastSeq)
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	cmd := b.client.B().Publish().Channel(Channel).Message(encodeRing(id, lastSeq)).Build()
	if err := b.client.Do(ctx, cmd).Error(); err != nil {
		b.publishFailed.Failed(ctx, err)
	}
}

// Run holds the subscription and runs the hub's periodic re-check until ctx
// is done. After every (re)subscription it re-checks at once, since rings
// published while it was down are lost.
func (b *Bell) Run(ctx context.Context) {
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.hub.RunRecheck(ctx, b.recheck, kick)
	}()
	defer func() { <-done }()

	onSubscribe := func(s valkey.PubSubSubscription) {
		if s.Kind == "subscribe" {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
	subCtx := valkey.WithOnSubscriptionHook(ctx, onSubscribe)
	backoff := backoffMin
	for {
		start := time.Now()
		err := b.client.Receive(subCtx, b.client.B().Subscribe().Channel(Channel).Build(), func(m valkey.PubSubMessage) {
			if id, seq, ok := decodeRing(m.Message); ok {
				b.hub.Ring(id, seq)
			}
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > backoffMax {
			backoff = backoffMin
		}
		b.log.WarnContext(ctx, "doorbell: subscription lost; resubscribing", slog.Any("error", err), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func encodeRing(id uuid.UUID, lastSeq int64) string {
	return id.String() + " " + strconv.FormatInt(lastSeq, 10)
}

func decodeRing(s string) (uuid.UUID, int64, bool) {
	idText, seqText, ok := strings.Cut(s, " ")
	if !ok {
		return uuid.Nil, 0, false
	}
	id, err := uuid.Parse(idText)
	if err != nil {
		return uuid.Nil, 0, false
	}
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if err != nil {
		return uuid.Nil, 0, false
	}
	return id, seq, true
}
