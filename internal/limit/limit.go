// Package limit holds the words rate limiting is spoken in: a budget
// (Check), its rate (Limit) and the answer for one request (Decision).
// internal/rpc asks for them and internal/ratelimit answers in them, so
// neither translates the other's types.
package limit

import "time"

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

// Check is one budget a request is counted against: Key under Limit.
type Check struct {
	Key   string
	Limit Limit
}

// Decision is the outcome of counting one request against one budget, with
// what the IETF RateLimit, RateLimit-Policy and Retry-After headers need.
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
