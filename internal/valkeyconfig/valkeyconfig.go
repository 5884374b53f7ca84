// Package valkeyconfig builds the one Valkey client that Parley's Valkey
// adapters (revocation, ratelimit, cache, valkeypubsub) share, and checks
// the server settings they rely on.
package valkeyconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/valkey-io/valkey-go"
)

// NoEviction is the maxmemory-policy Parley needs.
const NoEviction = "noeviction"

// ErrConfigRefused is returned by EvictionPolicy when the server refuses
// CONFIG GET: managed services (Azure Cache for Redis, ElastiCache,
// Memorystore) disable or rename CONFIG, and an ACL may deny it.
var ErrConfigRefused = errors.New("valkey refused CONFIG GET")

const (
	checkTimeout  = 2 * time.Second
	firstRetry    = time.Second
	maxRetryPause = time.Minute
)

// URLError is Open's error for a URL it cannot parse. Its text leaves the
// URL out: it may hold a password.
type URLError struct{ reason string }

func (e *URLError) Error() string { return e.reason }

// Open builds the process's one Valkey client. Valkey is a cache, not a
// source of truth: a replica starts (and keeps serving) while it is down,
// and the client reconnects on its own.
func Open(url string, log *slog.Logger) (valkey.Client, error) {
	opt, err := valkey.ParseURL(url)
	if err != nil {
		return nil, &URLError{reason: strings.ReplaceAll(err.Error(), url, "<url>")}
	}
	opt.ForceSingleClient = true
	opt.DisableCache = true
	opt.Dialer.Timeout = 2 * time.Second
	// Every request makes two to four small Valkey calls. Waiting up to
	// 20 µs after each flush lets the calls of concurrent requests share
	// one write and one read, which under load saves Parley and Valkey
	// more CPU than the wait costs in latency.
	opt.MaxFlushDelay = 20 * time.Microsecond
	client, err := valkey.NewClient(opt)
	if client == nil {
		return nil, fmt.Errorf("valkey client: %w", err)
	}
	if err != nil {
		log.Warn("valkey unreachable at start-up; serving with fallbacks until it answers", slog.String("error", err.Error()))
	}
	return client, nil
}

// EvictionPolicy returns the server's maxmemory-policy.
func EvictionPolicy(ctx context.Context, client valkey.Client) (string, error) {
	settings, err := client.Do(ctx, client.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
	if verr, ok := valkey.IsValkeyErr(err); ok {
		return "", fmt.Errorf("%w: %s", ErrConfigRefused, verr.Error())
	}
	if err != nil {
		return "", fmt.Errorf("config get maxmemory-policy: %w", err)
	}
	policy, ok := settings["maxmemory-policy"]
	if !ok {
		return "", fmt.Errorf("config get maxmemory-policy: no such setting in %v", settings)
	}
	return policy, nil
}

// CheckEvictionPolicy logs a warning unless the server's maxmemory-policy
// is noeviction. Under any other policy a server at maxmemory may evict a
// revoked token's key while the marker that vouches for the revocation
// cache stays, and every replica then accepts the revoked token until the
// marker expires; it may also evict a rate-limit key, which hands its
// caller a fresh budget. Under noeviction such writes fail instead, and the
// adapters fall back to PostgreSQL or to per-process limits.
//
// It does not stop Parley: Valkey is not a source of truth, and a managed
// service may not allow the policy to be read at all (ErrConfigRefused,
// logged at info). While Valkey does not answer it tries again, less and
// less often, until it gets an answer or ctx ends.
func CheckEvictionPolicy(ctx context.Context, client valkey.Client, log *slog.Logger) {
	pause := firstRetry
	for {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		policy, err := EvictionPolicy(cctx, client)
		cancel()
		switch {
		case err == nil && policy == NoEviction:
			return
		case err == nil:
			log.WarnContext(ctx, "valkey maxmemory-policy is not noeviction: at maxmemory Valkey may evict revoked-token and rate-limit keys, "+
				"and replicas would accept revoked access tokens; set maxmemory-policy noeviction",
				slog.String("maxmemory_policy", policy))
			return
		case errors.Is(err, ErrConfigRefused):
			log.InfoContext(ctx, "valkey maxmemory-policy not checked; it must be noeviction", slog.String("error", err.Error()))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, maxRetryPause)
	}
}
