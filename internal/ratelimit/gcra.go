package ratelimit

import (
	"errors"
	"fmt"
	"time"

	"github.com/parley-dev/parley/internal/limit"
)

// ErrInvalidLimit is returned by Allow when a Limit has a non-positive Rate or
// Period, a negative Burst, or a Rate so high that requests would be less than
// a microsecond apart.
var ErrInvalidLimit = errors.New("invalid rate limit")

// gcraParams are a limit.Limit in the form GCRA works with.
type gcraParams struct {
	interval time.Duration // emission interval: time one request "costs"
	burst    int           // bucket capacity in requests
}

func params(lim limit.Limit) (gcraParams, error) {
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

// gcra applies the generic cell rate algorithm to one request arriving at now
// against a key whose theoretical arrival time (the moment the bucket would be
// full again) is tat; tat <= now means full. It returns the tat to store and
// the decision. The Lua script in valkey.go is the same algorithm.
func gcra(now, tat time.Duration, p gcraParams) (time.Duration, limit.Decision) {
	if tat < now {
		tat = now
	}
	newTAT := tat + p.interval
	// The request conforms if, after it, the bucket holds at most burst
	// requests' worth of time.
	diff := now - (newTAT - p.interval*time.Duration(p.burst))
	if diff < 0 {
		return tat, limit.Decision{
			Limit:      p.burst,
			RetryAfter: -diff,
			ResetAfter: tat - now,
		}
	}
	return newTAT, limit.Decision{
		Allowed:    true,
		Limit:      p.burst,
		Remaining:  int(diff / p.interval),
		ResetAfter: newTAT - now,
	}
}
