// Package valkeypubsub carries conversation changes between replicas over
// Valkey pub/sub: after each committed change a replica PUBLISHes
// (conversation id, last_seq) on one channel, and every replica holds one
// subscription to it and passes what it hears to its conversation.Hub. New
// items travel the same way on a channel of their own, to the
// conversation.ItemHub.
package valkeypubsub

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

// Channel is the one Valkey channel every replica publishes on and listens
// to. Its name predates this package; it stays, so that replicas of both
// versions hear each other during a rolling update.
const Channel = "parley:doorbell:conversations"

// ItemsChannel carries (conversation id, last_item_seq) after each
// committed batch of items. It is new, so it takes no metaphor from Channel.
const ItemsChannel = "parley:items:changed"

const (
	// DefaultRecheck is how often a replica compares its watched
	// conversations with PostgreSQL when no change is heard.
	DefaultRecheck = 3 * time.Second
	// publishTimeout bounds a PUBLISH; a lost one only delays watches.
	publishTimeout = time.Second
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 5 * time.Second
)

// Notifier publishes a replica's committed changes and, while Run runs,
// holds the replica's one subscription and passes every change to the Hub.
// It implements conversation.Notifier.
type Notifier struct {
	client  valkey.Client
	channel string
	hub     Hub
	recheck time.Duration
	log     *slog.Logger
	// publishFailed logs failed publishes, one per SaveTurn while Valkey is
	// down, at most once per outage.Interval.
	publishFailed *outage.Log
}

var _ conversation.Notifier = (*Notifier)(nil)

// Hub is what a Notifier passes changes to: a conversation.Hub or
// conversation.ItemHub.
type Hub interface {
	Changed(id uuid.UUID, lastSeq int64)
	RunRecheck(ctx context.Context, interval time.Duration, kick <-chan struct{})
}

// New returns a Notifier on Channel publishing with client and passing what
// it hears to hub. recheck is the period of the hub's re-check (0 for
// DefaultRecheck).
func New(client valkey.Client, hub Hub, recheck time.Duration, log *slog.Logger) *Notifier {
	return newOn(Channel, client, hub, recheck, log)
}

// NewItems returns New's Notifier for items, on ItemsChannel.
func NewItems(client valkey.Client, hub Hub, recheck time.Duration, log *slog.Logger) *Notifier {
	return newOn(ItemsChannel, client, hub, recheck, log)
}

func newOn(channel string, client valkey.Client, hub Hub, recheck time.Duration, log *slog.Logger) *Notifier {
	if recheck <= 0 {
		recheck = DefaultRecheck
	}
	return &Notifier{client: client, channel: channel, hub: hub, recheck: recheck, log: log,
		publishFailed: outage.New(log, "valkeypubsub: publish failed; watches elsewhere catch up at the next re-check", nil)}
}

// Notify implements conversation.Notifier: it tells the other replicas
// through Valkey.
func (n *Notifier) Notify(ctx context.Context, id uuid.UUID, lastSeq int64) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	cmd := n.client.B().Publish().Channel(n.channel).Message(encode(id, lastSeq)).Build()
	if err := n.client.Do(ctx, cmd).Error(); err != nil {
		n.publishFailed.Failed(ctx, err)
	}
}

// Run holds the subscription and runs the hub's periodic re-check until ctx
// is done. After every (re)subscription it re-checks at once, since changes
// published while it was down are lost.
func (n *Notifier) Run(ctx context.Context) {
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.hub.RunRecheck(ctx, n.recheck, kick)
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
		err := n.client.Receive(subCtx, n.client.B().Subscribe().Channel(n.channel).Build(), func(m valkey.PubSubMessage) {
			if id, seq, ok := decode(m.Message); ok {
				n.hub.Changed(id, seq)
			}
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > backoffMax {
			backoff = backoffMin
		}
		n.log.WarnContext(ctx, "valkeypubsub: subscription lost; resubscribing", slog.Any("error", err), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func encode(id uuid.UUID, lastSeq int64) string {
	return id.String() + " " + strconv.FormatInt(lastSeq, 10)
}

func decode(s string) (uuid.UUID, int64, bool) {
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
