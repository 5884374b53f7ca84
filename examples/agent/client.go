package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// Client stores an agent's chat items in Parley and reads its chat context
// back. It holds an agent access token, exchanged for the agent key and
// renewed before it expires, and spreads its calls over several base URLs
// (replicas or regions), moving to the next one when a call fails in a way
// that retrying can fix.
//
// Every item carries its own id, fixed before the first try, so a retry
// after a lost answer (the replica died after committing) is answered with
// the stored items instead of storing them twice.
type Client struct {
	key     string
	targets []target
	log     *slog.Logger

	// Attempts is how many times a call is tried, over all URLs, before its
	// error is returned.
	Attempts int
	// AttemptTimeout bounds each try, so a hung replica costs seconds, not
	// the whole call.
	AttemptTimeout time.Duration
	// Backoff is the first wait between tries; it doubles up to MaxBackoff.
	Backoff, MaxBackoff time.Duration

	mu      sync.Mutex
	current int // index into targets of the URL that answered last
	token   string
	renewAt time.Time
}

type target struct {
	url           string
	auth          parleyv1connect.AuthServiceClient
	conversations parleyv1connect.ConversationServiceClient
}

// NewClient returns a Client for the agent key and the base URLs of Parley
// (http:// for cleartext HTTP/2, https:// for TLS). It talks gRPC.
func NewClient(key string, urls []string, log *slog.Logger) (*Client, error) {
	if key == "" {
		return nil, errors.New("no agent key")
	}
	if len(urls) == 0 {
		return nil, errors.New("no Parley URL")
	}
	// gRPC needs HTTP/2; Parley speaks it without TLS too (h2c).
	transport := &http.Transport{Protocols: new(http.Protocols)}
	transport.Protocols.SetHTTP2(true)
	transport.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: transport}
	c := &Client{key: key, log: log, Attempts: 8, AttemptTimeout: 5 * time.Second, Backoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}
	for _, u := range urls {
		c.targets = append(c.targets, target{
			url:           u,
			auth:          parleyv1connect.NewAuthServiceClient(hc, u, connect.WithGRPC()),
			conversations: parleyv1connect.NewConversationServiceClient(hc, u, connect.WithGRPC()),
		})
	}
	return c, nil
}

// AppendItems stores items at the end of a conversation, in order, each
// under its id, with agent and messageID kept on every one. Retrying the same
// items stores nothing new: replayed reports that Parley had them all.
func (c *Client) AppendItems(ctx context.Context, req *parleyv1.AppendItemsRequest) (stored []*parleyv1.Item, replayed bool, url string, err error) {
	err = c.retry(ctx, "AppendItems", func(ctx context.Context, t target) error {
		resp, err := authed(ctx, c, t, req, t.conversations.AppendItems)
		if err != nil {
			return err
		}
		stored, replayed, url = resp.GetItems(), resp.GetReplayed(), t.url
		return nil
	})
	return stored, replayed, url, err
}

// GetChatContext reads a conversation's chat context, the newest items
// within Parley's default budgets, up to untilSeq (0: up to the newest).
func (c *Client) GetChatContext(ctx context.Context, conversationID string, untilSeq int64) (*parleyv1.GetChatContextResponse, error) {
	req := &parleyv1.GetChatContextRequest{ConversationId: conversationID, UntilSeq: untilSeq}
	var out *parleyv1.GetChatContextResponse
	err := c.retry(ctx, "GetChatContext", func(ctx context.Context, t target) error {
		resp, err := authed(ctx, c, t, req, t.conversations.GetChatContext)
		out = resp
		return err
	})
	return out, err
}

// authed makes one call on t with the agent's token.
func authed[Req, Res any](ctx context.Context, c *Client, t target, req *Req, call func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)) (*Res, error) {
	tok, err := c.accessToken(ctx, t)
	if err != nil {
		return nil, err
	}
	r := connect.NewRequest(req)
	r.Header().Set("Authorization", "Bearer "+tok)
	resp, err := call(ctx, r)
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		// Revoked, or expired while we were retrying: get a new token
		// and let the next try use it.
		c.forgetToken(tok)
		return nil, fmt.Errorf("%w: %w", errTokenRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// accessToken returns the current token, exchanging the agent key for a new
// one (on target t) when none is held or a third of its life is left.
func (c *Client) accessToken(ctx context.Context, t target) (string, error) {
	c.mu.Lock()
	tok, renewAt := c.token, c.renewAt
	c.mu.Unlock()
	if tok != "" && time.Now().Before(renewAt) {
		return tok, nil
	}
	resp, err := t.auth.ExchangeAgentKey(ctx, connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: c.key}))
	if err != nil {
		return "", fmt.Errorf("exchange agent key: %w", err)
	}
	now := time.Now()
	exp := resp.Msg.GetExpiresAt().AsTime()
	c.mu.Lock()
	c.token, c.renewAt = resp.Msg.GetAccessToken(), now.Add(exp.Sub(now)*2/3)
	c.mu.Unlock()
	c.log.InfoContext(ctx, "agent token renewed", slog.String("url", t.url), slog.Time("expires_at", exp))
	return resp.Msg.GetAccessToken(), nil
}

func (c *Client) forgetToken(tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == tok {
		c.token = ""
	}
}

// retry runs call on the current URL until it succeeds, fails for good, or
// runs out of attempts. A retryable failure moves to the next URL and waits
// an exponentially growing, jittered while.
func (c *Client) retry(ctx context.Context, op string, call func(context.Context, target) error) error {
	wait := c.Backoff
	var err error
	for attempt := 1; ; attempt++ {
		c.mu.Lock()
		i := c.current
		c.mu.Unlock()
		t := c.targets[i]

		actx, cancel := context.WithTimeout(ctx, c.AttemptTimeout)
		err = call(actx, t)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil || attempt >= c.Attempts {
			return err
		}
		c.mu.Lock()
		if c.current == i {
			c.current = (i + 1) % len(c.targets)
		}
		c.mu.Unlock()
		c.log.WarnContext(ctx, "retrying", slog.String("op", op), slog.String("url", t.url), slog.Int("attempt", attempt), slog.String("error", err.Error()))

		// Full jitter keeps many agents from retrying in step.
		select {
		case <-time.After(rand.N(wait) + time.Millisecond):
		case <-ctx.Done():
			return err
		}
		wait = min(2*wait, c.MaxBackoff)
	}
}

// errTokenRefused marks a call refused for its token, which a retry with a
// fresh token fixes.
var errTokenRefused = errors.New("access token refused")

// retryable reports whether trying again (elsewhere) may succeed: the server
// was unreachable or unready, the try timed out, the connection broke, or
// the token went stale, or the stream was reset mid-answer.
// Parley refuses nothing else in a way that a retry would change.
func retryable(err error) bool {
	if errors.Is(err, errTokenRefused) || streamReset(err) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// streamReset reports whether err is an HTTP/2 RST_STREAM from the peer. A
// balancer resets the stream when the replica behind it dies after sending
// its response headers, and connect reports that as internal; the call's
// outcome is unknown, as with a broken connection, and the item ids make
// trying again safe. net/http's HTTP/2 does not export its StreamError, so
// this reads the message, as connect itself does.
func streamReset(err error) bool {
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeInternal {
		return false
	}
	cause := cerr.Unwrap()
	return cause != nil && strings.HasPrefix(cause.Error(), "stream error: ") && strings.HasSuffix(cause.Error(), "; received from peer")
}
