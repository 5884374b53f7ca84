package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/parley-dev/parley/internal/limit"
)

const (
	// localShards splits the local limiter's state so concurrent requests for
	// different keys rarely contend on one mutex.
	localShards = 32
	// localSweepEvery is how often a shard drops keys whose buckets have
	// refilled; such keys are indistinguishable from absent ones.
	localSweepEvery = 30 * time.Second
	// localEvictSample is how many entries are looked at to pick one to evict
	// when a shard is full (an approximate "closest to full" choice, as
	// Valkey's own approximate LRU does).
	localEvictSample = 8
)

// localLimiter is an in-process GCRA limiter used while Valkey is unreachable.
// Its memory is bounded: refilled buckets are swept, and a full shard evicts
// the sampled entry nearest to refilled.
type localLimiter struct {
	seed        maphash.Seed
	maxPerShard int
	shards      [localShards]localShard
}

type localShard struct {
	mu        sync.Mutex
	tats      map[string]time.Duration // key -> theoretical arrival time (since the Unix epoch)
	nextSweep time.Duration
	_         [64]byte // keep neighbouring shards' mutexes off one cache line
}

func newLocalLimiter(maxKeys int) *localLimiter {
	per := max(maxKeys/localShards, 1)
	l := &localLimiter{seed: maphash.MakeSeed(), maxPerShard: per}
	for i := range l.shards {
		l.shards[i].tats = make(map[string]time.Duration)
	}
	return l
}

func (l *localLimiter) allow(now time.Time, key string, p gcraParams) limit.Decision {
	t := time.Duration(now.UnixNano())
	s := &l.shards[maphash.String(l.seed, key)%localShards]
	s.mu.Lock()
	defer s.mu.Unlock()

	if t >= s.nextSweep {
		s.sweep(t)
		s.nextSweep = t + localSweepEvery
	}
	tat, ok := s.tats[key]
	newTAT, d := gcra(t, tat, p)
	if !ok && len(s.tats) >= l.maxPerShard {
		s.sweep(t)
		if len(s.tats) >= l.maxPerShard {
			s.evictOne()
		}
	}
	s.tats[key] = newTAT
	return d
}

// refund moves key's theoretical arrival time back by one interval.
func (l *localLimiter) refund(now time.Time, key string, p gcraParams) {
	t := time.Duration(now.UnixNano())
	s := &l.shards[maphash.String(l.seed, key)%localShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.tats[key]
	if !ok {
		return
	}
	if tat -= p.interval; tat <= t {
		delete(s.tats, key)
		return
	}
	s.tats[key] = tat
}

// sweep drops keys whose buckets are full again.
func (s *localShard) sweep(now time.Duration) {
	for k, tat := range s.tats {
		if tat <= now {
			delete(s.tats, k)
		}
	}
}

// evictOne drops the entry with the earliest refill among a few sampled
// (map iteration order is randomised), forgetting the least state.
func (s *localShard) evictOne() {
	var (
		victim string
		best   time.Duration
		n      int
	)
	for k, tat := range s.tats {
		if n == 0 || tat < best {
			victim, best = k, tat
		}
		n++
		if n == localEvictSample {
			break
		}
	}
	if n > 0 {
		delete(s.tats, victim)
	}
}

// len returns how many keys the limiter holds; for tests.
func (l *localLimiter) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tats)
		s.mu.Unlock()
	}
	return n
}
