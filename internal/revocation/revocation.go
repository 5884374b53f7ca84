// Package revocation keeps revoked access tokens, and the revoked refresh
// families whose access tokens are refused with them, in Valkey so that
// every replica refuses them with one round trip per request. PostgreSQL
// holds the record of truth (the Source); Valkey holds a copy, and a marker
// key that says the copy is complete. Whenever the cache cannot vouch for its
// answer (the marker is gone after a flush or an empty restart, or Valkey
// does not answer in time) the check asks the Source, so a revoked token is
// never accepted because Valkey lost or missed its key.
package revocation

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/outage"
)

// Source is the durable record of revocations the cache falls back to and
// is warmed from. postgres.AccountStore implements it.
type Source interface {
	// IsAccessTokenRevoked reports whether the token with the jti, or its
	// family unless that is uuid.Nil, is revoked.
	IsAccessTokenRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error)
	// RevokedAccessTokens returns every revocation whose token expires after
	// the time given.
	RevokedAccessTokens(ctx context.Context, now time.Time) ([]account.RevokedToken, error)
	// RevokedFamilies returns every family revocation that expires after
	// the time given.
	RevokedFamilies(ctx context.Context, now time.Time) ([]account.RevokedFamily, error)
}

// Defaults for Options.
const (
	DefaultKeyPrefix    = "parley:revoked:"
	DefaultCheckTimeout = 200 * time.Millisecond
	DefaultMarkerTTL    = 10 * time.Minute
)

const (
	// expiryGrace keeps a revocation past its token's expiry: verifiers
	// accept a token for a clock-skew leeway after exp (at most five minutes
	// in internal/token), and it must stay refused for all of it.
	expiryGrace = 5 * time.Minute
	// warmTimeout bounds a background warm-up; warmingTTL outlives it so a
	// replica that dies mid-warm does not leave its claim behind for long.
	warmTimeout = 30 * time.Second
	warmingTTL  = time.Minute
	// minWarmInterval keeps a replica from reloading back to back while
	// PostgreSQL or Valkey is struggling.
	minWarmInterval = time.Second
	warmBatch       = 500
)

// Options tune a Cache. Zero values take the defaults.
type Options struct {
	// KeyPrefix namespaces the keys (DefaultKeyPrefix): a revoked token is
	// <prefix><jti>, a revoked family <prefix>family:<id>, the marker
	// <prefix>loaded.
	KeyPrefix string
	// CheckTimeout bounds the Valkey round trip of IsRevoked before it falls
	// back to the Source (DefaultCheckTimeout).
	CheckTimeout time.Duration
	// MarkerTTL is how long a warm-up vouches for the cache
	// (DefaultMarkerTTL). When it lapses the next check warms again, which
	// also repairs a revocation whose cache write was lost.
	MarkerTTL time.Duration
	// Logger receives failures that do not fail the call. Nil discards them.
	Logger *slog.Logger
	// Now is the clock (time.Now).
	Now func() time.Time
}

// Cache implements account.RevocationCache over Valkey with a Source to fall
// back to. It is safe for concurrent use.
type Cache struct {
	client       valkey.Client
	source       Source
	now          func() time.Time
	prefix       string
	marker       string
	warming      string
	checkTimeout time.Duration
	markerTTL    time.Duration

	// unavailable logs failed checks, which would otherwise be one line
	// per request while Valkey is down; warmFailed failed warm-ups, one a
	// second while the checks find no marker.
	unavailable, warmFailed *outage.Log

	warmingNow atomic.Bool
	lastWarm   atomic.Int64 // unix nanoseconds of the last warm-up started
	wg         sync.WaitGroup
}

var _ account.RevocationCache = (*Cache)(nil)

// New returns a Cache over the shared Valkey client.
func New(client valkey.Client, source Source, opts Options) *Cache {
	c := &Cache{
		client:       client,
		source:       source,
		now:          opts.Now,
		prefix:       cmp.Or(opts.KeyPrefix, DefaultKeyPrefix),
		checkTimeout: cmp.Or(opts.CheckTimeout, DefaultCheckTimeout),
		markerTTL:    cmp.Or(opts.MarkerTTL, DefaultMarkerTTL),
	}
	c.marker = c.prefix + "loaded"
	c.warming = c.prefix + "warming"
	if c.now == nil {
		c.now = time.Now
	}
	c.unavailable = outage.New(opts.Logger, "revocation cache unavailable; asking the database", c.now)
	c.warmFailed = outage.New(opts.Logger, "warm revocation cache", c.now)
	return c
}

func (c *Cache) key(jti string) string { return c.prefix + jti }

// familyKey cannot be taken for a jti's key: a jti is base64url, without
// a colon.
func (c *Cache) familyKey(id uuid.UUID) string { return c.prefix + "family:" + id.String() }

// Revoke copies a revocation, already recorded in the Source, into Valkey
// until a little after exp. When that fails it tries to delete the marker
// (and any warm-up's claim), so that every replica asks the Source until a
// warm-up has copied the revocation; and if even that fails, the marker's
// TTL bounds how long the copy stays incomplete.
func (c *Cache) Revoke(ctx context.Context, jti string, exp time.Time) error {
	return c.revoke(ctx, c.key(jti), exp)
}

// RevokeFamily copies a family revocation, already recorded in the Source,
// into Valkey, as Revoke does for one token.
func (c *Cache) RevokeFamily(ctx context.Context, family uuid.UUID, exp time.Time) error {
	return c.revoke(ctx, c.familyKey(family), exp)
}

func (c *Cache) revoke(ctx context.Context, key string, exp time.Time) error {
	until := exp.Add(expiryGrace)
	if !until.After(c.now()) {
		return nil
	}
	err := c.client.Do(ctx, c.client.B().Set().Key(key).Value("1").
		PxatMillisecondsTimestamp(until.UnixMilli()).Build()).Error()
	if err == nil {
		return nil
	}
	// The claim goes too, so that a warm-up that read the Source before this
	// revocation was recorded cannot set the marker afterwards.
	if derr := c.client.Do(ctx, c.client.B().Del().Key(c.marker, c.warming).Build()).Error(); derr != nil {
		return fmt.Errorf("cache revocation: %w (and delete marker: %v)", err, derr)
	}
	return fmt.Errorf("cache revocation (marker deleted): %w", err)
}

// IsRevoked reports whether the token with the jti, or its family unless
// that is uuid.Nil, is revoked, in one Valkey round trip when the cache is
// complete. Otherwise it asks the Source and, if Valkey answered without its
// marker, starts a warm-up in the background.
//
// The family's key is read by a GET of its own, pipelined in the same round
// trip as the MGET of the token's key and the marker, so that it need not
// share a hash slot with them, and the keys keep the names older replicas
// read.
func (c *Cache) IsRevoked(ctx context.Context, jti string, family uuid.UUID) (bool, error) {
	revoked, complete, err := c.lookup(ctx, jti, family)
	switch {
	case err == nil:
		c.unavailable.Recovered(ctx, "revocation cache answering again")
		if revoked || complete {
			return revoked, nil
		}
		c.startWarm(ctx)
	case ctx.Err() != nil:
		return false, ctx.Err()
	default:
		c.unavailable.Failed(ctx, err)
	}
	revoked, err = c.source.IsAccessTokenRevoked(ctx, jti, family)
	if err != nil {
		return false, fmt.Errorf("check revocation: %w", err)
	}
	return revoked, nil
}

// lookup reads the token's and the family's keys and the marker, and
// reports whether either key is set and whether the marker is.
func (c *Cache) lookup(ctx context.Context, jti string, family uuid.UUID) (revoked, complete bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.checkTimeout)
	defer cancel()
	mget := c.client.B().Mget().Key(c.key(jti), c.marker).Build()
	var vals []valkey.ValkeyMessage
	if family == uuid.Nil {
		vals, err = c.client.Do(ctx, mget).ToArray()
	} else {
		res := c.client.DoMulti(ctx, mget, c.client.B().Get().Key(c.familyKey(family)).Build())
		ferr := res[1].Error()
		if ferr == nil {
			return true, false, nil
		}
		if vals, err = res[0].ToArray(); err == nil && !valkey.IsValkeyNil(ferr) {
			err = ferr
		}
	}
	if err != nil {
		return false, false, err
	}
	if len(vals) != 2 {
		return false, false, fmt.Errorf("MGET answered %d values", len(vals))
	}
	return !vals[0].IsNil(), !vals[1].IsNil(), nil
}

// startWarm runs Warm in the background unless this process is already
// warming or did so less than minWarmInterval ago.
func (c *Cache) startWarm(ctx context.Context) {
	now := c.now().UnixNano()
	if now-c.lastWarm.Load() < int64(minWarmInterval) || !c.warmingNow.CompareAndSwap(false, true) {
		return
	}
	c.lastWarm.Store(now)
	c.wg.Add(1)
	// The warm-up serves every later request, not this one: it must not
	// end with the request that noticed the missing marker.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), warmTimeout)
	go func() {
		defer c.wg.Done()
		defer cancel()
		defer c.warmingNow.Store(false)
		if err := c.Warm(ctx); err != nil {
			c.warmFailed.Failed(ctx, err)
		}
	}()
}

// claimMarker sets the marker only if this warm-up's claim still stands: a
// flush or restart during the warm-up removes the claim (and perhaps keys
// already copied), and a later warm-up by another replica replaces it.
var claimMarker = valkey.NewLuaScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	redis.call("SET", KEYS[2], "1", "PX", ARGV[2])
	redis.call("DEL", KEYS[1])
	return 1
end
return 0`)

// Warm copies every unexpired revocation, of tokens and of families, from
// the Source into Valkey and then sets the marker that lets checks trust
// the cache. Replicas may warm at once; the marker is set only by a
// warm-up whose copy is complete.
func (c *Cache) Warm(ctx context.Context) error {
	var idb [16]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return fmt.Errorf("warm: claim id: %w", err)
	}
	id := hex.EncodeToString(idb[:])
	// The claim goes in before reading the Source, so any revocation
	// committed after the read was also written to Valkey after the claim,
	// and is lost only by something that also removes the claim.
	if err := c.client.Do(ctx, c.client.B().Set().Key(c.warming).Value(id).Px(warmingTTL).Build()).Error(); err != nil {
		return fmt.Errorf("warm: set claim: %w", err)
	}
	now := c.now()
	toks, err := c.source.RevokedAccessTokens(ctx, now.Add(-expiryGrace))
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	families, err := c.source.RevokedFamilies(ctx, now.Add(-expiryGrace))
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	cmds := make(valkey.Commands, 0, min(len(toks)+len(families), warmBatch))
	flush := func() error {
		for _, r := range c.client.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return fmt.Errorf("warm: copy revocation: %w", err)
			}
		}
		cmds = cmds[:0]
		return nil
	}
	copyKey := func(key string, exp time.Time) error {
		until := exp.Add(expiryGrace)
		if !until.After(now) {
			return nil
		}
		cmds = append(cmds, c.client.B().Set().Key(key).Value("1").
			PxatMillisecondsTimestamp(until.UnixMilli()).Build())
		if len(cmds) == warmBatch {
			return flush()
		}
		return nil
	}
	for _, t := range toks {
		if err := copyKey(c.key(t.ID), t.ExpiresAt); err != nil {
			return err
		}
	}
	for _, f := range families {
		if err := copyKey(c.familyKey(f.ID), f.ExpiresAt); err != nil {
			return err
		}
	}
	if len(cmds) > 0 {
		if err := flush(); err != nil {
			return err
		}
	}
	ttl := strconv.FormatInt(c.markerTTL.Milliseconds(), 10)
	if err := claimMarker.Exec(ctx, c.client, []string{c.warming, c.marker}, []string{id, ttl}).Error(); err != nil {
		return fmt.Errorf("warm: set marker: %w", err)
	}
	return nil
}

// Close waits for a background warm-up to finish. Call it once no more
// checks are made, before closing the Valkey client and the Source.
func (c *Cache) Close() {
	c.wg.Wait()
}
