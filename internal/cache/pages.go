// Package cache keeps conversation heads (owner and last_seq) and
// ListMessages pages in Valkey. A page is stored with the last_seq it was
// read at and served only while the conversation's head has that last_seq,
// so a saved turn, which advances the head before SaveTurn answers, retires
// every page of its conversation at once. One MGET fetches a head and a
// page together: an unchanged conversation's page costs one round trip and
// no PostgreSQL query.
package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/outage"
)

const (
	// DefaultTTL is how long a page is kept when NewPages is given none.
	DefaultTTL = 5 * time.Minute
	// headTTL bounds how long a head outlives its last write. A writer that
	// cannot advance a head (Valkey unreachable from its replica, or a reply
	// lost) waits until the stale head has expired before it answers, and a
	// writer that dies between its commit and the advance leaves the head
	// behind for at most this long. A busy conversation pays one PostgreSQL
	// read per headTTL for it.
	headTTL = 3 * time.Second
	// recordWindow is how old a reader's PostgreSQL read may be when it
	// records the head it read: an older read is dropped, so a head from
	// before a commit can outlive the commit by at most recordWindow+headTTL.
	recordWindow = headTTL / 2
	// deletedTTL keeps a deleted conversation's mark far longer than any
	// reader from before the delete can take to record its head, and longer
	// than its pages live.
	deletedTTL = time.Hour
	// opTimeout bounds each Valkey call: a slow or dead Valkey costs a
	// request at most this much before it falls back to PostgreSQL.
	opTimeout = 250 * time.Millisecond

	keyPrefix       = "parley:page:"
	headPrefix      = "parley:head:"
	deletedHead     = "deleted"
	encodingVersion = 2
)

// Pages is a conversation.PageCache over Valkey. It is safe for concurrent
// use.
type Pages struct {
	client   valkey.Client
	ttl      time.Duration
	hits     prometheus.Counter
	misses   prometheus.Counter
	failures prometheus.Counter
	outage   *outage.Log
}

var _ conversation.PageCache = (*Pages)(nil)

// NewPages returns a page cache over client whose pages live for ttl (0 for
// DefaultTTL), counting its requests in parley_cache_requests_total on reg
// and logging Valkey's failures to log (nil discards them), at most once per
// outage.Interval.
func NewPages(client valkey.Client, ttl time.Duration, reg prometheus.Registerer, log *slog.Logger) (*Pages, error) {
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
		outage:   outage.New(log, "page cache unavailable; reading PostgreSQL", nil),
	}, nil
}

// failed counts a failed Valkey call made for a request whose context is
// ctx, and logs it unless the request itself had given up.
func (c *Pages) failed(ctx context.Context, err error) {
	c.failures.Inc()
	if ctx.Err() == nil {
		c.outage.Failed(ctx, err)
	}
}

// Lookup implements conversation.PageCache with one MGET.
func (c *Pages) Lookup(ctx context.Context, k conversation.PageKey) (conversation.Head, bool, conversation.CachedPage, int64) {
	vctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	vals, err := c.client.Do(vctx, c.client.B().Mget().Key(headKey(k.ConversationID), pageKey(k)).Build()).ToArray()
	if err == nil && len(vals) != 2 {
		err = fmt.Errorf("MGET answered %d values", len(vals))
	}
	if err != nil {
		c.failed(ctx, err)
		return conversation.Head{}, false, conversation.CachedPage{}, -1
	}
	c.outage.Recovered(ctx, "page cache answering again")
	var (
		h      conversation.Head
		headOK bool
	)
	if hs, err := vals[0].ToString(); err == nil {
		// A head whose owner is not known yet is not usable.
		h, headOK = decodeHead(hs)
	}
	pageSeq := int64(-1)
	var p conversation.CachedPage
	if b, err := vals[1].AsBytes(); err == nil {
		if pageSeq, p, err = decodePage(k.ConversationID, b); err != nil {
			c.failures.Inc()
			return h, headOK, conversation.CachedPage{}, -1
		}
	}
	if headOK && !h.Deleted && pageSeq == h.LastSeq {
		c.hits.Inc()
	} else {
		c.misses.Inc() // no head, no page, or a page from before the latest turn
	}
	return h, headOK, p, pageSeq
}

// PutPage implements conversation.PageCache. Failures are dropped: the page
// is read from PostgreSQL again next time.
func (c *Pages) PutPage(ctx context.Context, k conversation.PageKey, p conversation.CachedPage) {
	vctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := c.client.B().Set().Key(pageKey(k)).Value(valkey.BinaryString(encodePage(k.LastSeq, p))).Px(c.ttl).Build()
	if err := c.client.Do(vctx, cmd).Error(); err != nil && ctx.Err() == nil {
		c.outage.Failed(ctx, err)
	}
}

// putHead sets a head to the larger of its cached and given last_seq, with
// the owner given or, when none is, the cached one. A deleted head stays
// deleted; a head without a known owner is kept (readers treat it as
// absent) so that a later RecordHead cannot move last_seq back. A write that
// would change nothing is skipped, so that it does not extend the life of a
// head another writer failed to advance.
//
// The script is retryable: the same advance applied twice is the same
// advance.
//
// KEYS[1] head; ARGV[1] owner or ""; ARGV[2] last_seq; ARGV[3] TTL (ms).
var putHead = valkey.NewLuaScriptRetryable(`
local cur = redis.call('GET', KEYS[1])
local owner, seq = ARGV[1], tonumber(ARGV[2])
if cur then
  if cur == '` + deletedHead + `' then return 0 end
  local sep = string.find(cur, ':', 1, true)
  if sep then
    local cowner = string.sub(cur, 1, sep - 1)
    local cseq = tonumber(string.sub(cur, sep + 1))
    if cseq and cseq >= seq and cowner ~= '' and (owner == '' or owner == cowner) then
      return 0
    end
    if cseq and cseq > seq then seq = cseq end
    if owner == '' then owner = cowner end
  end
end
redis.call('SET', KEYS[1], owner .. ':' .. string.format('%d', seq), 'PX', ARGV[3])
return 1`)

// RecordHead implements conversation.PageCache. A head read more than
// recordWindow ago is not recorded: a commit may have come and its advance
// expired since.
func (c *Pages) RecordHead(ctx context.Context, id uuid.UUID, h conversation.Head, readAt time.Time) {
	if time.Since(readAt) > recordWindow {
		return
	}
	vctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := c.putHead(vctx, id, h.Owner.String(), h.LastSeq); err != nil {
		c.failed(ctx, err)
	}
}

// AdvanceHead implements conversation.PageCache. When the advance cannot
// be written it retries until it is, or until every head a reader could
// still find without it has expired (headTTL+recordWindow): either way no
// replica serves a page without the turn once it returns.
func (c *Pages) AdvanceHead(ctx context.Context, id uuid.UUID, lastSeq int64) {
	c.ensure(ctx, func(ctx context.Context) error { return c.putHead(ctx, id, "", lastSeq) })
}

// DeleteHead implements conversation.PageCache, retrying as AdvanceHead does.
func (c *Pages) DeleteHead(ctx context.Context, id uuid.UUID) {
	c.ensure(ctx, func(ctx context.Context) error {
		return c.client.Do(ctx, c.client.B().Set().Key(headKey(id)).Value(deletedHead).Px(deletedTTL).Build().ToRetryable()).Error()
	})
}

func (c *Pages) putHead(ctx context.Context, id uuid.UUID, owner string, lastSeq int64) error {
	return putHead.Exec(ctx, c.client, []string{headKey(id)},
		[]string{owner, strconv.FormatInt(lastSeq, 10), strconv.FormatInt(headTTL.Milliseconds(), 10)}).Error()
}

// ensure runs write until it succeeds or until headTTL+recordWindow has
// passed since the first attempt, with a short backoff between attempts.
func (c *Pages) ensure(ctx context.Context, write func(context.Context) error) {
	deadline := time.Now().Add(headTTL + recordWindow)
	backoff := 20 * time.Millisecond
	for {
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := write(wctx)
		cancel()
		if err == nil {
			return
		}
		c.failed(ctx, err)
		wait := time.Until(deadline)
		if wait <= 0 {
			return
		}
		t := time.NewTimer(min(backoff, wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func headKey(id uuid.UUID) string { return headPrefix + id.String() }

// decodeHead parses "owner:last_seq" or the deleted mark. A head whose
// owner is not known yet (written by AdvanceHead alone) is not usable.
func decodeHead(s string) (conversation.Head, bool) {
	if s == deletedHead {
		return conversation.Head{Deleted: true}, true
	}
	owner, seq, ok := strings.Cut(s, ":")
	if !ok {
		return conversation.Head{}, false
	}
	id, err := uuid.Parse(owner)
	if err != nil {
		return conversation.Head{}, false
	}
	last, err := strconv.ParseInt(seq, 10, 64)
	if err != nil || last < 0 {
		return conversation.Head{}, false
	}
	return conversation.Head{Owner: id, LastSeq: last}, true
}

// pageKey names a page by everything that determines its content but the
// last_seq, which is stored in the page.
func pageKey(k conversation.PageKey) string {
	b := make([]byte, 0, len(keyPrefix)+36+3*20)
	b = append(b, keyPrefix...)
	b = append(b, k.ConversationID.String()...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(k.Order), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, k.Cursor, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(k.Size), 10)
	return string(b)
}

// encodePage writes a page compactly: version, more flag, the last_seq it
// was read at, count, then per message its id, seq, role, created_at (Unix
// nanoseconds), turn id and content. The conversation id is in the key.
func encodePage(lastSeq int64, p conversation.CachedPage) []byte {
	n := 2 + 2*binary.MaxVarintLen64
	for _, m := range p.Messages {
		n += 16 + 3*binary.MaxVarintLen64 + 1 + 2*binary.MaxVarintLen64 + len(m.TurnID) + len(m.Content)
	}
	b := make([]byte, 0, n)
	var more byte
	if p.More {
		more = 1
	}
	b = append(b, encodingVersion, more)
	b = binary.AppendUvarint(b, uint64(lastSeq))
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

func decodePage(conversationID uuid.UUID, b []byte) (int64, conversation.CachedPage, error) {
	d := decoder{b: b}
	if d.byte() != encodingVersion {
		return 0, conversation.CachedPage{}, errCorrupt
	}
	p := conversation.CachedPage{More: d.byte() == 1}
	last := int64(d.uvarint())
	count := d.uvarint()
	if d.err != nil || count > uint64(len(b)) {
		return 0, conversation.CachedPage{}, errCorrupt
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
		return 0, conversation.CachedPage{}, errCorrupt
	}
	return last, p, nil
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
