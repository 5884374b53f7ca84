// Package cache keeps ListMessages pages in Valkey. Pages are keyed by the
// conversation's last_seq as read from PostgreSQL, so a saved turn moves
// readers to new keys: nothing is ever invalidated and nothing is ever
// stale. Old keys expire with their TTL.
package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/conversation"
)

const (
	// DefaultTTL is how long a page is kept when NewPages is given none.
	DefaultTTL = 5 * time.Minute
	// opTimeout bounds each Valkey call: a slow or dead Valkey costs a
	// request at most this much before it falls back to PostgreSQL.
	opTimeout = 250 * time.Millisecond

	keyPrefix       = "parley:msgpage:"
	encodingVersion = 1
)

// Pages is a conversation.PageCache over Valkey. It is safe for concurrent
// use.
type Pages struct {
	client   valkey.Client
	ttl      time.Duration
	hits     prometheus.Counter
	misses   prometheus.Counter
	failures prometheus.Counter
}

var _ conversation.PageCache = (*Pages)(nil)

// NewPages returns a page cache over client whose pages live for ttl (0 for
// DefaultTTL), counting its requests in parley_cache_requests_total on reg.
func NewPages(client valkey.Client, ttl time.Duration, reg prometheus.Registerer) (*Pages, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_cache_requests_total",
		Help: "ListMessages page cache lookups by result (hit, miss, error).",
	}, []string{"result"})
	if err := reg.Register(requests); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		requests = existing
	}
	return &Pages{
		client:   client,
		ttl:      ttl,
		hits:     requests.WithLabelValues("hit"),
		misses:   requests.WithLabelValues("miss"),
		failures: requests.WithLabelValues("error"),
	}, nil
}

// GetPage implements conversation.PageCache with one GET.
func (c *Pages) GetPage(ctx context.Context, k conversation.PageKey) (conversation.CachedPage, bool) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	b, err := c.client.Do(ctx, c.client.B().Get().Key(pageKey(k)).Build()).AsBytes()
	if valkey.IsValkeyNil(err) {
		c.misses.Inc()
		return conversation.CachedPage{}, false
	}
	if err != nil {
		c.failures.Inc()
		return conversation.CachedPage{}, false
	}
	p, err := decodePage(k.ConversationID, b)
	if err != nil {
		c.failures.Inc()
		return conversation.CachedPage{}, false
	}
	c.hits.Inc()
	return p, true
}

// PutPage implements conversation.PageCache. Failures are dropped: the page
// is read from PostgreSQL again next time.
func (c *Pages) PutPage(ctx context.Context, k conversation.PageKey, p conversation.CachedPage) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := c.client.B().Set().Key(pageKey(k)).Value(valkey.BinaryString(encodePage(p))).Px(c.ttl).Build()
	_ = c.client.Do(ctx, cmd).Error()
}

// pageKey names a page by everything that determines its content.
func pageKey(k conversation.PageKey) string {
	b := make([]byte, 0, len(keyPrefix)+36+4*20)
	b = append(b, keyPrefix...)
	b = append(b, k.ConversationID.String()...)
	b = append(b, ':')
	b = strconv.AppendInt(b, k.LastSeq, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(k.Order), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, k.Cursor, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(k.Size), 10)
	return string(b)
}

// encodePage writes a page compactly: version, more flag, count, then per
// message its id, seq, role, created_at (Unix nanoseconds), turn id and
// content. The conversation id is in the key.
func encodePage(p conversation.CachedPage) []byte {
	n := 2 + binary.MaxVarintLen64
	for _, m := range p.Messages {
		n += 16 + 3*binary.MaxVarintLen64 + 1 + 2*binary.MaxVarintLen64 + len(m.TurnID) + len(m.Content)
	}
	b := make([]byte, 0, n)
	var more byte
	if p.More {
		more = 1
	}
	b = append(b, encodingVersion, more)
	b = binary.AppendUvarint(b, uint64(len(p.Messages)))
	for _, m := range p.Messages {
		b = append(b, m.ID[:]...)
		b = binary.AppendUvarint(b, uint64(m.Seq))
		b = append(b, byte(m.Role))
		b = binary.AppendVarint(b, m.CreatedAt.UnixNano())
		b = binary.AppendUvarint(b, uint64(len(m.TurnID)))
		b = append(b, m.TurnID...)
		b = binary.AppendUvarint(b, uint64(len(m.Content)))
		b = append(b, m.Content...)
	}
	return b
}

var errCorrupt = errors.New("corrupt cached page")

func decodePage(conversationID uuid.UUID, b []byte) (conversation.CachedPage, error) {
	d := decoder{b: b}
	if d.byte() != encodingVersion {
		return conversation.CachedPage{}, errCorrupt
	}
	p := conversation.CachedPage{More: d.byte() == 1}
	count := d.uvarint()
	if d.err != nil || count > uint64(len(b)) {
		return conversation.CachedPage{}, errCorrupt
	}
	p.Messages = make([]conversation.Message, 0, count)
	// One string holds the whole page: turn ids and contents are slices of
	// it, which saves two allocations per message.
	text := string(b)
	for range count {
		m := conversation.Message{ConversationID: conversationID}
		copy(m.ID[:], d.bytes(16))
		m.Seq = int64(d.uvarint())
		m.Role = conversation.Role(d.byte())
		m.CreatedAt = time.Unix(0, d.varint()).UTC()
		m.TurnID = d.text(text, int(d.uvarint()))
		m.Content = d.text(text, int(d.uvarint()))
		p.Messages = append(p.Messages, m)
	}
	if d.err != nil || len(d.b) != 0 {
		return conversation.CachedPage{}, errCorrupt
	}
	return p, nil
}

// decoder reads a page, remembering the first error so the caller checks
// once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.err = errCorrupt
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// text is bytes(n) as a substring of whole, the string form of the
// decoder's original input.
func (d *decoder) text(whole string, n int) string {
	v := d.bytes(n)
	if v == nil {
		return ""
	}
	end := len(whole) - len(d.b)
	return whole[end-n : end]
}

func (d *decoder) byte() byte {
	v := d.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}
