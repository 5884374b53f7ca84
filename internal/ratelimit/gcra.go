package ratelimit

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidLimit is returned by Allow when a Limit has a non-positive Rate or
// Period, a negative Burst, or a Rate so high that requests would be less than
// a microsecond apart.
var ErrInvalidLimit = errors.New("invalid rate limit")

// Limit is a rate: Rate requests per Period, of which up to Burst may arrive
// at once. After a burst the budget refills smoothly, one request every
// Period/Rate, rather than all at once at a window boundary.
type Limit struct {
	// Rate is how many requests are allowed per Period.
	Rate int
	// Period is the window Rate is measured over, typically time.Minute.
	Period time.Duration
	// Burst is how many requests may arrive back to back after a quiet spell.
	// Zero means Rate: a full period's worth at once.
	Burst int
}

// PerMinute returns a Limit of n requests per minute, all of which may arrive
// at once.
func PerMinute(n int) Limit {
	return Limit{Rate: n, Period: time.Minute}
}

// gcraParams are a Limit in the form GCRA works with.
type gcraParams struct {
	interval time.Duration // emission interval: time one request "costs"
	burst    int           // bucket capacity in requests
}

func (lim Limit) params() (gcraParams, error) {
	if lim.Rate <= 0 || lim.Period <= 0 || lim.Burst < 0 {
		return gcraParams{}, fmt.Errorf("%w: %d per %s, burst %d", ErrInvalidLimit, lim.Rate, lim.Period, lim.Burst)
	}
	interval := lim.Period / time.Duration(lim.Rate)
	// Valkey computes in microseconds; a zero interval would allow everything.
	if interval < time.Microsecond {
		return gcraParams{}, fmt.Errorf("%w: %d per %s is too fast", ErrInvalidLimit, lim.Rate, lim.Period)
	}
	burst := lim.Burst
	if burst == 0 {
		burst = lim.Rate
	}
	return gcraParams{interval: interval, burst: burst}, nil
}

// Decision is the outcome of one Allow call, with what the IETF RateLimit,
// RateLimit-Policy and Retry-After headers need.
type Decision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Limit is the bucket's capacity: the most requests that may arrive at
	// once (the Limit's Burst, or its Rate when Burst is zero).
	Limit int
	// Remaining is how many more requests would be allowed right now.
	Remaining int
	// RetryAfter is how long to wait before the next request can be allowed.
	// It is positive only when Allowed is false. Round it up when turning it
	// into whole seconds for a Retry-After header.
	RetryAfter time.Duration
	// ResetAfter is how long until the bucket is full again (Remaining ==
	// Limit) if no more requests arrive.
	ResetAfter time.Duration
}

// gcra applies the generic cell rate algorithm to one request arriving at now
// against a key whose theoretical arrival time (the moment the bucket would be
// full again) is tat; tat <= now means full. It returns the tat to store and
// the decision. The Lua script in valkey.go is the same algorithm.
func gcra(now, tat time.Duration, p gcraParams) (time.Duration, Decision) {
	if tat < now {
		tat = now
	}
	newTAT := tat + p.interval
	// The request conforms if, after it, the bucket holds at most burst
	// requests' worth of time.
	diff := now - (newTAT - p.interval*time.Duration(p.burst))
	if diff < 0 {
		return tat, Decision{
			Limit:      p.burst,
			RetryAfter: -diff,
			ResetAfter: tat - now,
		}
	}
	return newTAT, Decision{
		Allowed:    true,
		Limit:      p.burst,
		Remaining:  int(diff / p.interval),
		ResetAfter: newTAT - now,
	}
}
